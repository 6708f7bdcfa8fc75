"""OAuth2 client credentials (RFC 6749 §4.4) for webhooks whose ``auth`` asks for them.

A webhook with ``auth: {"type": "oauth2_client_credentials", "token_url", "client_id",
"client_secret", "scope"}`` gets ``Authorization: Bearer <token>`` on every delivery and test
send. :class:`AuthorizingSender` wraps the process's sender: an attempt whose channel has no
``oauth`` (channel.py) goes straight to the wrapped sender; one with it asks the
:class:`TokenCache` for a token, sends, and on a 401 refreshes the token once and sends again
(the same webhook-id, timestamp and signature), all under ONE deadline (``delivery.timeout_s``),
so an attempt still ends within it and the stall timeout keeps its meaning. (A first send with a
kept token is the wrapped sender's attempt alone, under its own deadline of the same length:
its timeout then says whose failure it is, the egress proxy's when dialling it took too long.)

The token request goes through the wrapped sender too, so the token URL passes the same
address policy (``security.*``), egress proxy and answer bounds as a delivery: ``POST
token_url`` with ``grant_type=client_credentials[&scope=...]``, the client id and secret in
``Authorization: Basic`` (each form-urlencoded first, RFC 6749 §2.3.1), answered by JSON
with ``access_token``, ``token_type`` Bearer (any case; absent is taken as Bearer) and
``expires_in`` (absent: 300 s). It uses the system's trust store, not the webhook's ``tls``
settings, which are the target's. This module makes no HTTP call of its own.

:class:`TokenCache` holds one token per webhook (keyed by ``OAuthSpec.key``: changed
credentials never reuse a token) for the whole process, until less than
``min(60 s, lifetime / 2)`` of its lifetime is left. Concurrent attempts share one token
request (single flight: the request runs in a task of its own, which an attempt's deadline
never cancels), and a failed request is remembered for :data:`FAILURE_MEMORY_S`, so a broken
token server sees one request per webhook in that time, not one per attempt.

A token failure is the attempt's failure, with a text naming the token URL and what its
server said (``error`` and ``error_description`` of an RFC 6749 §5.2 answer), never the client
secret or a token; it counts against the webhook's breaker like any unanswered attempt (the
token server is the endpoint's), unless the egress proxy failed (``blame = "proxy"``).
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import quote_plus, urlencode

import orjson
import structlog

from dispatcher.channel import PLAIN
from dispatcher.config_values import redact_url
from dispatcher.http1 import SNIPPET_CHARS
from dispatcher.sender import Outcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
    from types import TracebackType

    from dispatcher.channel import Channel, OAuthSpec
    from dispatcher.metrics import Metrics
    from dispatcher.sender import HttpSender

__all__ = [
    "FAILURE_MEMORY_S",
    "RESULTS",
    "TOKEN_REQUESTS_METRIC",
    "AuthorizingSender",
    "Token",
    "TokenCache",
    "TokenFailure",
]

log = structlog.get_logger()

TOKEN_REQUESTS_METRIC: Final = "dispatcher_oauth_token_requests_total"  # noqa: S105  # a name
#: The metric's ``result``: a token issued, an error answer, no answer (refused address,
#: connection failure, timeout), a 2xx answer without a usable token.
RESULTS: Final = ("ok", "rejected", "failed", "malformed")
#: A failed token request is the answer for this long: no new request before it has passed.
FAILURE_MEMORY_S: Final = 5.0
#: A token's lifetime when the answer gives no ``expires_in`` (RFC 6749 §5.1 leaves it open).
DEFAULT_LIFETIME_S: Final = 300.0
#: A token is refreshed when less than this (or half its lifetime, if shorter) is left.
REFRESH_AHEAD_S: Final = 60.0
#: Webhooks whose tokens (or failures) are kept; past it the oldest kept is dropped.
TOKENS_KEPT: Final = 10_000
#: The token answer's bytes kept for parsing (the sender's own bound applies first).
ANSWER_BYTES: Final = 65536
#: An attempt past its deadline waiting for a token waits this much longer at most for the
#: token request's own end (its deadline comes moments after the attempt's that started it).
VERDICT_WAIT_S: Final = 0.02
_UNAUTHORIZED: Final = 401


class TokenFailure(Exception):  # noqa: N818  # an outcome, not a programming error
    """No token could be had: ``error`` is the attempt's error text."""

    def __init__(self, error: str, *, blame: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.blame = blame  # the failed request's Outcome.blame ("proxy": the proxy's)


@dataclass(frozen=True, slots=True)
class Token:
    """A token issued and how long the server said it lasts."""

    value: str = field(repr=False)
    lifetime_s: float


@dataclass(frozen=True, slots=True)
class _Kept:
    value: str = field(repr=False)
    refresh_at: float  # on the cache's clock


@dataclass(frozen=True, slots=True)
class _Failed:
    error: str
    blame: str | None
    until: float  # on the cache's clock


class TokenCache:
    """One bearer token per webhook for the process, fetched once for concurrent attempts.

    ``now`` is the clock expiry and failure memory are measured on (monotonic seconds; a
    test injects its own).
    """

    def __init__(
        self, *, now: Callable[[], float] = time.monotonic, limit: int = TOKENS_KEPT
    ) -> None:
        self._now = now
        self._limit = limit
        self._kept: dict[str, _Kept | _Failed] = {}
        self._fetching: dict[str, asyncio.Task[Token | TokenFailure]] = {}

    def fresh(self, spec: OAuthSpec) -> str | None:
        """The kept token of ``spec`` while fresh, else None (no fetch: ``get`` does that)."""
        kept = self._kept.get(spec.key)
        if isinstance(kept, _Kept) and self._now() < kept.refresh_at:
            return kept.value
        return None

    async def get(self, spec: OAuthSpec, fetch: Callable[[OAuthSpec], Awaitable[Token]]) -> str:
        """A token for ``spec``: the kept one while fresh, else the one ``fetch`` gets (one
        fetch at a time per webhook, shared by every caller). TokenFailure when the fetch
        failed, now or within the last FAILURE_MEMORY_S."""
        kept = self._kept.get(spec.key)
        if kept is not None:
            if isinstance(kept, _Kept):
                if self._now() < kept.refresh_at:
                    return kept.value
            elif self._now() < kept.until:
                raise TokenFailure(kept.error, blame=kept.blame)
        task = self._fetching.get(spec.key)
        if task is None or task.done():  # done: cancelled by close before it ran (no finally)
            task = asyncio.create_task(self._fetch(spec, fetch), name=f"oauth-token {spec.key}")
            self._fetching[spec.key] = task
        # shield: a caller's deadline cancels its own wait, never the fetch the others share
        got = await asyncio.shield(task)
        if isinstance(got, TokenFailure):
            raise TokenFailure(got.error, blame=got.blame)
        return got.value

    async def failure(self, spec: OAuthSpec, within_s: float) -> TokenFailure | None:
        """How the fetch for ``spec`` failed, if it did (or does within ``within_s``); None
        when it is still under way then, or got a token."""
        task = self._fetching.get(spec.key)
        if task is not None:
            await asyncio.wait({task}, timeout=within_s)  # never cancels it
        kept = self._kept.get(spec.key)
        if isinstance(kept, _Failed) and self._now() < kept.until:
            return TokenFailure(kept.error, blame=kept.blame)
        return None

    def invalidate(self, spec: OAuthSpec, token: str) -> None:
        """Forget ``token`` (a target refused it), unless another has replaced it already: many
        attempts refused the same token cause one new fetch."""
        kept = self._kept.get(spec.key)
        if isinstance(kept, _Kept) and kept.value == token:
            del self._kept[spec.key]

    async def close(self) -> None:
        """Cancel the fetches under way."""
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch(
        self, spec: OAuthSpec, fetch: Callable[[OAuthSpec], Awaitable[Token]]
    ) -> Token | TokenFailure:
        """Fetch and keep the result; a failure is returned, not raised (no caller may be left
        to retrieve it)."""
        asked_at = self._now()
        try:
            token = await fetch(spec)
        except TokenFailure as failure:
            until = self._now() + FAILURE_MEMORY_S
            self._keep(spec.key, _Failed(failure.error, failure.blame, until))
            return failure
        finally:
            del self._fetching[spec.key]
        lifetime = token.lifetime_s
        self._keep(
            spec.key, _Kept(token.value, asked_at + lifetime - min(REFRESH_AHEAD_S, lifetime / 2))
        )
        return token

    def _keep(self, key: str, value: _Kept | _Failed) -> None:
        kept = self._kept
        kept.pop(key, None)  # re-inserted last: the oldest kept is dropped first
        if len(kept) >= self._limit:
            del kept[next(iter(kept))]
        kept[key] = value


class AuthorizingSender:
    """An :class:`~dispatcher.sender.HttpSender` that adds an OAuth2 bearer token to the
    attempts whose channel asks for one, fetching it through ``inner``."""

    def __init__(
        self,
        inner: HttpSender,
        tokens: TokenCache | None = None,
        *,
        timeout_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        """``timeout_s``: the one deadline of an attempt, token and resend included
        (``delivery.timeout_s``, as ``inner``'s)."""
        self.inner = inner
        self.tokens = TokenCache() if tokens is None else tokens
        self._timeout_s = timeout_s
        self._timeout_error = f"timed out after {float(timeout_s)} s"
        self._metrics = metrics
        if metrics is not None:
            for result in RESULTS:
                metrics.inc(TOKEN_REQUESTS_METRIC, 0, result=result)  # shown from the start

    @property
    def stale_retries(self) -> int:
        return self.inner.stale_retries

    @stale_retries.setter
    def stale_retries(self, value: int) -> None:
        self.inner.stale_retries = value

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.tokens.close()
        await self.inner.close()

    def attempt(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        keep_body: int = 0,
        channel: Channel = PLAIN,
    ) -> Coroutine[Any, Any, Outcome]:
        """As ``inner.attempt``; with ``channel.oauth``, authorized by a bearer token (a 401
        refreshes it once), under one deadline. Never raises except ``CancelledError``. (Not
        async itself: without OAuth2 it is ``inner``'s own coroutine, no frame added.)"""
        spec = channel.oauth
        if spec is None:
            return self.inner.attempt(url, body, headers, keep_body=keep_body, channel=channel)
        return self._attempt(spec, url, body, headers, keep_body=keep_body, channel=channel)

    async def _attempt(
        self,
        spec: OAuthSpec,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        keep_body: int,
        channel: Channel,
    ) -> Outcome:
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        # The webhook's own Authorization header, if any, gives way to the token.
        plain = {name: value for name, value in headers.items() if name.lower() != "authorization"}

        def send(token: str) -> Coroutine[Any, Any, Outcome]:
            authorized = {**plain, "authorization": f"Bearer {token}"}
            return self.inner.attempt(url, body, authorized, keep_body=keep_body, channel=channel)

        waiting = True  # for a token (else sending)
        try:
            token = self.tokens.fresh(spec)
            if token is not None:
                # Sent at once: the send's own deadline (timeout_s) is the attempt's, and its
                # timeout says whose failure it is (the egress proxy's, dialled too long).
                waiting = False
                outcome = await send(token)
            else:
                async with asyncio.timeout_at(deadline):
                    token = await self.tokens.get(spec, self._fetch)
                    waiting = False
                    outcome = await send(token)
            if outcome.status == _UNAUTHORIZED:
                self.tokens.invalidate(spec, token)
                waiting = True
                async with asyncio.timeout_at(deadline):  # what is left of the one deadline
                    token = await self.tokens.get(spec, self._fetch)
                    waiting = False
                    outcome = await send(token)
        except TimeoutError:
            error, blame = self._timeout_error, None
            if waiting:
                # The token request ends on its own deadline too, moments later when this
                # attempt started it: if the egress proxy failed it, the failure is the
                # proxy's (its text and blame), not the endpoint's.
                failure = await self.tokens.failure(spec, VERDICT_WAIT_S)
                if failure is not None and failure.blame is not None:
                    error, blame = failure.error, failure.blame
                else:
                    error += f" waiting for an OAuth2 token from {redact_url(spec.token_url)}"
            return Outcome(None, error, _ms_since(started), None, timed_out=True, blame=blame)
        except TokenFailure as failure:
            return Outcome(None, failure.error, _ms_since(started), None, blame=failure.blame)
        outcome.duration_ms = _ms_since(started)  # the whole attempt, token included
        return outcome

    async def _fetch(self, spec: OAuthSpec) -> Token:
        """One token request (RFC 6749 §4.4.2) through ``inner``; TokenFailure naming the token
        URL and the server's error, never the secret."""
        form = {"grant_type": "client_credentials"}
        if spec.scope:
            form["scope"] = spec.scope
        secret = quote_plus(spec.client_secret, safe="")
        pair = f"{quote_plus(spec.client_id, safe='')}:{secret}"
        credentials = base64.b64encode(pair.encode()).decode("ascii")
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "accept": "application/json",
            "authorization": f"Basic {credentials}",
        }
        outcome = await self.inner.attempt(
            spec.token_url, urlencode(form).encode(), headers, keep_body=ANSWER_BYTES
        )
        # what no error text may show, should the server echo it: longest first
        hidden = sorted({spec.client_secret, secret, credentials} - {""}, key=len, reverse=True)
        try:
            token = _token_of(outcome, hidden)
        except TokenFailure as failure:
            result = "failed" if outcome.status is None else "rejected"
            if outcome.delivered:
                result = "malformed"
            self._count(result)
            error = _hide(failure.error, hidden)
            text = f"OAuth2 token request to {redact_url(spec.token_url)} failed: {error}"
            log.warning(
                "oauth.token_failed",
                webhook_id=spec.key.partition(":")[0],
                status=outcome.status,
                error=text,
            )
            raise TokenFailure(text, blame=outcome.blame) from None
        self._count("ok")
        return token

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.inc(TOKEN_REQUESTS_METRIC, result=result)


def _token_of(outcome: Outcome, hidden: Sequence[str] = ()) -> Token:
    """The token of a token answer; TokenFailure saying what is wrong, quoting no token, and
    none of ``hidden`` (taken out of the server's words before they are cut short)."""
    if outcome.status is None:
        raise TokenFailure(outcome.error or "no answer")
    answer = _json_object(outcome.body)
    if not outcome.delivered:
        code = None if answer is None else answer.get("error")
        if answer is not None and isinstance(code, str):
            said = _clean(code, hidden)
            detail = answer.get("error_description")
            if isinstance(detail, str) and detail.strip():
                said += f" ({_clean(detail, hidden)})"
            raise TokenFailure(f"HTTP {outcome.status}: {said}")
        if any(text.encode() in outcome.body for text in hidden):
            # the sender's snippet of the body may have cut an echoed secret short
            said = _clean(outcome.body.decode(errors="replace"), hidden)
            raise TokenFailure(f"HTTP {outcome.status}: {said}")
        raise TokenFailure(outcome.error or f"HTTP {outcome.status}")
    where = f"HTTP {outcome.status} answer"
    if answer is None:
        raise TokenFailure(f"{where} is not a JSON object")
    value = answer.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenFailure(f"{where} has no access_token")
    if not all("!" <= char <= "~" for char in value):
        raise TokenFailure(f"{where}: access_token is not visible ASCII text")
    kind = answer.get("token_type", "Bearer")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise TokenFailure(f"{where}: token_type is not Bearer")
    return Token(value, _lifetime_s(answer.get("expires_in"), where))


def _lifetime_s(expires_in: object, where: str) -> float:
    """``expires_in`` in seconds (a number, or a string of one, as some servers send it)."""
    if expires_in is None:
        return DEFAULT_LIFETIME_S
    seconds: float | None = None
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        seconds = float(expires_in)
    elif isinstance(expires_in, str):
        try:
            seconds = float(expires_in)
        except ValueError:
            seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise TokenFailure(f"{where}: expires_in is not a number of seconds")
    return max(seconds, 0.0)


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _clean(text: str, hidden: Sequence[str] = ()) -> str:
    """Server-given text fit for an error line: without ``hidden``, one line, at most
    SNIPPET_CHARS."""
    return " ".join(_hide(text, hidden).split())[:SNIPPET_CHARS]


def _hide(text: str, hidden: Sequence[str]) -> str:
    """``text`` with each of ``hidden`` (the client secret, should a server echo it) as ***."""
    for secret in hidden:
        text = text.replace(secret, "***")
    return text


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000
