"""One HTTP attempt at a webhook target, always answered with an :class:`Outcome`.

The sender owns the process's single ``ClientSession`` (RELIABILITY R14). It never touches
Redis and never logs: the delivery loop decides what an outcome means and logs it.

Guarantees of :meth:`Sender.attempt`:

- one overall deadline (``timeout_s``) over connect, request, headers and the body read, so
  a target that drips one byte at a time cannot outlive it (aiohttp's read timeouts restart
  on every chunk);
- at most ``max_response_bytes`` of the body are read, never decompressed
  (``Accept-Encoding: identity``, ``auto_decompress=False``), and a body still arriving after
  the cap closes the connection instead of being drained;
- redirects are not followed, proxies and cookies are not used, and every address dialled
  passes the :class:`~dispatcher.ssrf.AddressPolicy` (names through the connector's
  :class:`~dispatcher.ssrf.GuardedResolver`, IP literals here before the request);
- every failure, malformed answers included, is an ``Outcome``; only ``CancelledError``
  escapes.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import functools
import math
import socket
import time
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Final, Self

import aiohttp
from aiohttp import hdrs
from yarl import URL

from dispatcher.ssrf import GuardedResolver, TargetRefused

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from dispatcher.ssrf import AddressPolicy

__all__ = ["Outcome", "Sender"]

_SCHEMES: Final = frozenset({"http", "https"})
_SNIPPET_CHARS: Final = 200
_SNIPPET_BYTES: Final = 4 * _SNIPPET_CHARS  # enough bytes for 200 UTF-8 characters
# The connector caches resolver answers, and the resolver only ever returns addresses the
# policy allows, so a cached answer is always a checked one: a name that starts resolving to
# a refused address is refused once its entry expires, and is never dialled at the new address
# before that. 10 s keeps a busy target from costing a lookup per new connection.
_DNS_CACHE_TTL_S: Final = 10


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to.

    ``status`` is the HTTP status of a complete answer (headers and the capped body), None
    when there was none (connect errors, timeouts, a connection broken mid-answer).
    ``error`` is None exactly when the target answered 2xx, else a short human sentence.
    ``retry_after_s`` comes from any answer's ``Retry-After`` (None when absent or garbled).
    """

    status: int | None
    error: str | None
    duration_ms: float
    retry_after_s: float | None
    timed_out: bool = False

    @property
    def delivered(self) -> bool:
        """Whether the target accepted the delivery (a 2xx)."""
        return self.error is None


class Sender:
    """POSTs deliveries through one pooled, policy-guarded ``ClientSession``."""

    def __init__(
        self,
        *,
        timeout_s: float,
        concurrency: int,
        policy: AddressPolicy,
        user_agent: str,
        max_response_bytes: int = 65536,
    ) -> None:
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._policy = policy
        self._user_agent = user_agent
        self._max_response_bytes = max_response_bytes
        self._timeout_error = f"timed out after {float(timeout_s)} s"
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None

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
        """Open the session; call once, inside the event loop that will send."""
        if self._session is not None:
            raise RuntimeError("the sender is already started")
        self._resolver = GuardedResolver(self._policy)
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            # Per-webhook isolation is the traffic controller's job (adaptive max_in_flight):
            # a lone healthy webhook may use the whole pool.
            limit_per_host=self._concurrency,
            resolver=self._resolver,
            ttl_dns_cache=_DNS_CACHE_TTL_S,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={
                hdrs.USER_AGENT: self._user_agent,
                hdrs.ACCEPT_ENCODING: "identity",
                hdrs.CONTENT_TYPE: "application/json",
            },
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),  # no cookies carried between tenants
            trust_env=False,  # no proxies from the environment
            auto_decompress=False,  # bounded reads: a gzip bomb stays compressed
        )

    async def close(self) -> None:
        """Close the session and its connections; safe to call twice."""
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()

    async def attempt(self, url: str, body: bytes, headers: Mapping[str, str]) -> Outcome:
        """POST ``body`` to ``url`` once; never raises except ``CancelledError``."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._exchange(url, body, headers, started)
        except TimeoutError:  # before OSError: aiohttp's timeouts are both
            return Outcome(None, self._timeout_error, _ms_since(started), None, timed_out=True)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Outcome(None, _describe(exc), _ms_since(started), None)

    async def _exchange(
        self, url: str, body: bytes, headers: Mapping[str, str], started: float
    ) -> Outcome:
        if self._session is None:
            raise RuntimeError("the sender is not started")
        try:
            target = _parse_url(url)
        except ValueError as exc:
            return Outcome(None, f"invalid URL: {exc}", _ms_since(started), None)
        refused = self._refusal(target)
        if refused is not None:
            return Outcome(None, refused, _ms_since(started), None)
        response = await self._session.post(
            target, data=body, headers=headers, allow_redirects=False
        )
        try:
            content = await _read_capped(response.content, self._max_response_bytes)
        finally:
            if response.content.at_eof():
                response.release()  # back to the pool
            else:
                response.close()  # never drain what is left
        return _answer(response, content, started)

    def _refusal(self, target: URL) -> str | None:
        if target.scheme not in _SCHEMES:
            return f"invalid URL: scheme {target.scheme!r} is not http or https"
        host = target.raw_host
        if not host:
            return "invalid URL: no host"
        reason = self._policy.literal_refusal(host)
        if reason is None:
            return None
        return str(TargetRefused(host, host, reason))


@functools.lru_cache(maxsize=4096)
def _parse_url(url: str) -> URL:
    # Each webhook's URL repeats on every attempt; URL objects are immutable.
    return URL(url)


async def _read_capped(stream: aiohttp.StreamReader, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        chunk = await stream.read(cap - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _answer(response: aiohttp.ClientResponse, content: bytes, started: float) -> Outcome:
    status = response.status
    retry_after = response.headers.get(hdrs.RETRY_AFTER)
    retry_after_s = None if retry_after is None else parse_retry_after(retry_after)
    if 200 <= status < 300:  # noqa: PLR2004
        error = None
    elif 300 <= status < 400 and hdrs.LOCATION in response.headers:  # noqa: PLR2004
        location = response.headers[hdrs.LOCATION][:_SNIPPET_CHARS]
        error = f"redirect to {location} not followed (HTTP {status})"
    else:
        snippet = content[:_SNIPPET_BYTES].decode(errors="replace")[:_SNIPPET_CHARS].strip()
        error = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
    return Outcome(status, error, _ms_since(started), retry_after_s)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


def parse_retry_after(value: str, now_s: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date, relative
    to ``now_s``, default the wall clock); 0 for the past, None for garbage."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP dates are GMT
    now_s = time.time() if now_s is None else now_s
    return max(when.timestamp() - now_s, 0.0)


def _describe(exc: Exception) -> str:
    """A short sentence for a failed exchange, chosen by the exception's type."""
    match exc:
        case aiohttp.ClientSSLError():
            text = f"TLS with {exc.host} failed: {exc.os_error}"
        case aiohttp.ClientConnectorError():
            text = _connect_error(exc)
        case aiohttp.ServerDisconnectedError():
            text = "the target closed the connection without a complete response"
        case aiohttp.ClientPayloadError():
            text = "the response body was cut short or malformed"
        case aiohttp.ClientResponseError():
            text = "malformed response: " + " ".join(exc.message.split())[:_SNIPPET_CHARS]
        case aiohttp.InvalidURL():
            text = f"invalid URL: {exc.description or exc.url}"
        case OSError():
            text = _os_error(exc)
        case ValueError():
            text = f"invalid request: {exc}"
        case _:
            text = f"request failed ({type(exc).__name__}): {exc}"
    return text


def _connect_error(exc: aiohttp.ClientConnectorError) -> str:
    cause = exc.os_error
    if isinstance(cause, TargetRefused):
        return str(cause)
    if isinstance(cause, socket.gaierror):
        return f"DNS lookup of {exc.host} failed"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    return f"cannot connect to {exc.host}:{exc.port}: {cause.strerror or type(cause).__name__}"


def _os_error(exc: OSError) -> str:
    if isinstance(exc, TargetRefused):
        return str(exc)
    if isinstance(exc, ConnectionResetError) or exc.errno == errno.ECONNRESET:
        return "connection reset by the target"
    return f"network error: {exc.strerror or type(exc).__name__}"
