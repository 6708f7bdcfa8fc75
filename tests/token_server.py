"""A real OAuth2 token endpoint and a target that checks its tokens, for tests.

    async with TokenServer(expires_in=3600) as tokens, BearerTarget(tokens) as target:
        ...  # a webhook at target.url() whose auth.token_url is tokens.url
        assert tokens.requests == 1

``TokenServer`` answers the client credentials grant (RFC 6749 §4.4) on 127.0.0.1 (or
``host``): it counts every POST, checks the Basic credentials (§2.3.1: the form-urlencoded id
and secret), the content type and the form, and issues ``tok-1``, ``tok-2``, ... with the
``expires_in`` chosen. ``script`` makes the next requests answer otherwise (an error status
with a JSON body, or no answer at all); ``revoke`` withdraws a token. ``BearerTarget`` answers
200 to a request whose ``Authorization: Bearer`` token the server issued and has not revoked,
and 401 otherwise (or to every request with ``refuse_all``), recording what it received.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self, TypeAlias
from urllib.parse import parse_qsl, unquote_plus

import orjson

from tests.target import _read_request, _respond, _until_gone

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from tests.target import Received

__all__ = ["BearerTarget", "Fail", "Hang", "TokenServer"]

CLIENT_ID = "client 1:ü"  # a space, a colon and a non-ASCII letter: the §2.3.1 encoding counts
CLIENT_SECRET = "s3cr3t/+=:%"  # noqa: S105 # never in an answer, an error text or a log line


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer ``status`` with ``body`` (JSON when a dict, else as given)."""

    status: int = 400
    body: Mapping[str, object] | bytes = field(default_factory=lambda: {"error": "invalid_client"})


@dataclass(frozen=True, slots=True)
class Hang:
    """Never answer; hold the connection until the client goes away."""


Script: TypeAlias = Fail | Hang

_Answer: TypeAlias = tuple[int, bytes, dict[str, str]] | None  # None: no answer (hang)


class _Server:
    """A small HTTP/1.1 server on ``host`` at an ephemeral port whose answers ``answer``
    chooses per request; an async context manager."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[object]] = set()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def answer(self, request: Received) -> _Answer:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in self._writers:
            writer.close()  # handlers see EOF and end on their own (as tests/target.py)
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.add(writer)
        try:
            while (request := await _read_request(reader)) is not None:
                self.received.append(request)
                answer = self.answer(request)
                if answer is None:
                    await _until_gone(reader)
                    break
                await _respond(writer, *answer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if task is not None:
                self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()


class TokenServer(_Server):
    """An OAuth2 token endpoint at ``url`` (path ``/token``) issuing ``tok-<n>``."""

    def __init__(
        self,
        *,
        expires_in: float | None = 3600,
        scope: str | None = None,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host)
        self.expires_in = expires_in  # None: the answer leaves it out
        self.scope = scope  # the scope a request must ask for (None: none)
        self.client_id = client_id
        self.client_secret = client_secret
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.refusals: list[str] = []  # why requests were refused (credentials, form)
        self._script: list[Script] = []

    @property
    def url(self) -> str:
        """The token URL."""
        return f"{self.base_url}/token"

    @property
    def requests(self) -> int:
        """The token requests received."""
        return len(self.received)

    def script(self, *answers: Script) -> None:
        """Answer the next requests with ``answers`` in order, the last one repeating; no
        arguments: issue tokens again."""
        self._script = list(answers)

    def revoke(self, token: str) -> None:
        """Make ``token`` invalid at the targets from now on."""
        self.revoked.add(token)

    def valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and not revoked."""
        return token in self.issued and token not in self.revoked

    def answer(self, request: Received) -> _Answer:
        if self._script:
            scripted = self._script.pop(0) if len(self._script) > 1 else self._script[0]
            if isinstance(scripted, Hang):
                return None
            body = scripted.body
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            return scripted.status, data, {"Content-Type": "application/json"}
        refusal = self._refusal(request)
        if refusal is not None:
            self.refusals.append(refusal)
            status = 401 if refusal.startswith("credentials") else 400
            error = "invalid_client" if status == 401 else "invalid_request"
            body = orjson.dumps({"error": error, "error_description": refusal})
            return status, body, {"Content-Type": "application/json"}
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        answer: dict[str, object] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return 200, orjson.dumps(answer), {"Content-Type": "application/json"}

    def _refusal(self, request: Received) -> str | None:  # noqa: PLR0911  # one return a check
        """Why the request is not a client credentials grant by this client, or None."""
        if request.method != "POST" or request.path != "/token":
            return f"{request.method} {request.path} is not the token endpoint"
        if request.headers.get("content-type") != "application/x-www-form-urlencoded":
            return "content type is not application/x-www-form-urlencoded"
        if "application/json" not in request.headers.get("accept", ""):
            return "accept does not name application/json"
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            pair = base64.b64decode(encoded, validate=True).decode()
        except ValueError:
            return "credentials: Authorization is not Basic base64"
        given_id, colon, given_secret = pair.partition(":")
        if scheme.lower() != "basic" or not colon:
            return "credentials: Authorization is not Basic"
        if (unquote_plus(given_id), unquote_plus(given_secret)) != (
            self.client_id,
            self.client_secret,
        ):
            return "credentials: wrong client id or secret"
        form = dict(parse_qsl(request.body.decode(), keep_blank_values=True, strict_parsing=True))
        wanted = {"grant_type": "client_credentials"}
        if self.scope is not None:
            wanted["scope"] = self.scope
        if form != wanted:
            return f"form {sorted(form)} is not {sorted(wanted)}"
        return None


class BearerTarget(_Server):
    """A webhook target that accepts only a bearer token ``tokens`` issued and still holds
    valid (or none at all with ``refuse_all``)."""

    def __init__(
        self, tokens: TokenServer, *, refuse_all: bool = False, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(host)
        self.tokens = tokens
        self.refuse_all = refuse_all

    def url(self, path: str = "/hook") -> str:
        """The absolute URL of ``path`` on this target."""
        return self.base_url + path

    @property
    def bearers(self) -> list[str | None]:
        """The bearer token of each request received, in order (None: no bearer)."""
        found: list[str | None] = []
        for request in self.received:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            found.append(token if scheme.lower() == "bearer" else None)
        return found

    def answer(self, request: Received) -> _Answer:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not self.refuse_all and scheme.lower() == "bearer" and self.tokens.valid(token):
            return 200, b"ok", {}
        return 401, b"bad token", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
