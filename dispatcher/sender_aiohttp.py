"""The same attempt as :mod:`dispatcher.sender`, made with aiohttp's ``ClientSession``.

``delivery.http_client = "aiohttp"`` chooses it, for an endpoint the native client mishandles;
the native client stays the default because aiohttp costs several times the CPU per POST (see
bench/ and the README). :class:`AiohttpSender` has :class:`~dispatcher.sender.Sender`'s
interface and keeps every guarantee listed in that module's docstring, which one conformance
suite (tests/test_sender.py, test_ssrf.py, test_hostile_http.py) checks for both:

- one ``asyncio.timeout`` covers resolve, connect, TLS, request, headers and the body read
  (aiohttp's own timeouts are off), so a dripping target cannot outlive it;
- the body is read up to ``max_response_bytes`` and never decompressed
  (``Accept-Encoding: identity``, ``auto_decompress=False``); a longer answer closes the
  connection instead of being drained;
- :class:`_BoundedHandler`, the protocol of every connection, counts the bytes of each answer
  as :class:`dispatcher.http1.Connection` does: ``HEAD_LIMIT_BYTES`` for the status lines and
  headers (1xx included), at most ``INTERIM_LIMIT`` interim answers, then a bounded tail for
  the body's framing and trailers; aiohttp's ``max_line_size``/``max_field_size``/
  ``max_headers`` are set wide enough that this count decides first, with the same texts;
- bytes with no request outstanding (a pipelined extra answer, bytes on an idle connection)
  close the connection; one difference remains: bytes that do not parse, arriving in the
  same read as a complete answer, make aiohttp's parser drop that answer, so the attempt fails
  as a malformed response (and is retried) where the native client records the answer;
- redirects are not followed, no proxy from the environment (``trust_env=False``), no cookie
  (``DummyCookieJar``) and no credentials from the URL are used, names resolve through the
  :class:`~dispatcher.ssrf.GuardedResolver` and IP literals (which aiohttp dials without a
  lookup) are checked before anything is sent;
- with ``proxy_url`` aiohttp's own proxy support sends CONNECT (https) or absolute form (http);
  its errors are mapped as :mod:`dispatcher.proxy` says (``_Connector``), the CONNECT answer
  is counted against the head bound by the same protocol, and the resolver lets the proxy's
  own name through (target names are the proxy's to resolve);
- a POST whose kept-alive connection closed without a byte of answer is sent once more, and
  counted in ``stale_retries`` (aiohttp retries only idempotent methods by itself); aiohttp's
  pool chooses the connection, so the resend may go on another kept-alive one;
- every failure is an ``Outcome`` with the native client's texts; only ``CancelledError``
  escapes.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self

import aiohttp
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from dispatcher import http1
from dispatcher.channel import PLAIN, Channel
from dispatcher.http1 import HEAD_LIMIT_BYTES, INTERIM_LIMIT
from dispatcher.proxy import BLAME, Proxy, ProxyFailure, connect_refusal, reason
from dispatcher.sender import (
    STALE_RETRIES_METRIC,
    Outcome,
    answer_outcome,
    check_header,
    proxy_challenge,
)
from dispatcher.ssrf import GuardedResolver, TargetRefused

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.http_parser import RawResponseMessage
    from aiohttp.streams import StreamReader
    from aiohttp.tracing import Trace

    from dispatcher.metrics import Metrics
    from dispatcher.ssrf import AddressPolicy

__all__ = ["AiohttpSender"]

_DNS_CACHE_TTL_S: Final = 10.0  # as the native sender: cached answers are checked ones
_IDLE_S: Final = 15.0
_READ_CHUNK: Final = 16384


@dataclass(slots=True)
class _Exchange:
    """What the connection serving one request saw, for the stale-connection retry."""

    handler: _BoundedHandler | None = None
    reused: bool = False
    # through the egress proxy: dialling it (until TCP to it connects) / a tunnel opened (TLS
    # with the target begins)
    at_proxy: bool = False
    tunnelled: bool = False
    via: Mapping[str, Any] = field(default_factory=dict)  # session.post's proxy arguments


_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar(
    "dispatcher_aiohttp_exchange", default=None
)


class _BoundedHandler(ResponseHandler):
    """aiohttp's connection protocol with the native client's bounds on each answer.

    ``taken`` counts the bytes of the current answer against ``budget``: ``HEAD_LIMIT_BYTES``
    until the final answer's headers are parsed, then room for the capped body and a head's
    worth of framing and trailers (``tail``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, cap: int) -> None:
        super().__init__(loop)
        self.tail = 8 * cap + HEAD_LIMIT_BYTES
        self.taken = 0
        self.budget = HEAD_LIMIT_BYTES
        self.interims = 0
        self.served = 0  # requests sent on this connection
        self.expecting = False  # a request is outstanding and its answer not complete
        self.head_done = False
        self.answer_body: StreamReader | None = None

    def set_response_params(self, **params: Any) -> None:
        """aiohttp calls this once per request, just before it is sent: a new answer begins."""
        super().set_response_params(**params)
        self.served += 1
        self.taken = self.interims = 0
        self.budget = HEAD_LIMIT_BYTES
        self.head_done = False
        self.answer_body = None
        self.expecting = True
        exchange = _EXCHANGE.get()
        if exchange is not None:
            exchange.handler = self
            exchange.reused = self.served > 1

    def data_received(self, data: bytes) -> None:
        """Count the bytes against the budget before aiohttp parses them."""
        if not self.expecting:
            if data and self.transport is not None:
                self.transport.close()  # bytes no request asked for: out of step for good
            return
        self.taken += len(data)
        if self.taken <= self.budget:
            super().data_received(data)
            return
        if self.head_done:
            text = f"the body's chunk framing and trailers exceed {self.tail} bytes"
            self._fail(http1.Oversized(text))
            return
        room = len(data) - (self.taken - self.budget)
        self.taken -= len(data) - room
        super().data_received(data[:room])
        if self._past_head():  # the final head ended within the limit, or the answer failed
            if room < len(data):
                self.data_received(data[room:])
            return
        text = f"the status line and headers exceed {HEAD_LIMIT_BYTES} bytes"
        self._fail(http1.Oversized(text))

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        """One parsed answer head: skip-count interim ones, refuse any after the final one."""
        message, payload = data
        if not self.expecting or self.head_done:
            if self.transport is not None:
                self.transport.close()  # an answer with no request outstanding
            return
        if 100 <= message.code < 200 and message.code != 101:  # noqa: PLR2004 - interim
            self.interims += 1
            if self.interims > INTERIM_LIMIT:
                self._fail(http1.Oversized(f"more than {INTERIM_LIMIT} interim (1xx) responses"))
                return
        else:
            self.head_done = True
            self.budget = self.taken + self.tail
            self.answer_body = payload
            payload.on_eof(self._answer_complete)
        super().feed_data(data, size)

    def _past_head(self) -> bool:
        return self.head_done or not self.expecting

    def _answer_complete(self) -> None:
        self.expecting = False

    def _fail(self, exc: Exception) -> None:
        self.expecting = False
        if self.answer_body is not None:
            self.answer_body.set_exception(exc)
        self.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class _Connector(aiohttp.TCPConnector):
    """A TCPConnector whose connections use :class:`_BoundedHandler`, and whose failures on
    the way through the egress proxy say whose they are (:mod:`dispatcher.proxy`)."""

    def __init__(self, *, cap: int, proxy: Proxy | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._egress = proxy
        # aiohttp has no public hook for the protocol; its tests (the conformance suite)
        # fail loudly if this attribute stops being the protocol factory.
        self._factory = functools.partial(  # type: ignore[assignment]  # a ResponseHandler
            _BoundedHandler, loop=self._loop, cap=cap
        )

    async def _create_proxy_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> tuple[asyncio.BaseTransport, ResponseHandler]:
        proxy = self._egress
        exchange = _EXCHANGE.get()
        if proxy is None or exchange is None:  # not ours: aiohttp's own proxy handling
            return await super()._create_proxy_connection(req, traces, timeout)
        exchange.at_proxy = True
        try:
            return await super()._create_proxy_connection(req, traces, timeout)
        except aiohttp.ClientHttpProxyError as exc:
            challenge = exc.headers is not None and "Proxy-Authenticate" in exc.headers
            host = req.url.raw_host or ""
            raise connect_refusal(
                proxy, exc.status, exc.message, challenge=challenge, host=host
            ) from exc
        except (OSError, aiohttp.ClientError, http1.Oversized, http1.MalformedAnswer) as exc:
            if exchange.tunnelled:  # TLS with the target, through the tunnel: the endpoint's
                raise
            if isinstance(exc, http1.Oversized | http1.MalformedAnswer):  # _BoundedHandler's
                raise ProxyFailure(proxy, f"its CONNECT answer: {exc}") from exc
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise ProxyFailure(proxy, reason(exc.os_error)) from exc
            if isinstance(exc, aiohttp.ServerDisconnectedError):
                raise ProxyFailure(proxy, "closed the connection before answering CONNECT") from exc
            if isinstance(exc, aiohttp.ClientResponseError):
                why = f"malformed CONNECT answer: {_parse_error(exc)}"
                raise ProxyFailure(proxy, why) from exc
            raise ProxyFailure(proxy, reason(exc)) from exc

    async def _create_direct_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
        *,
        client_error: type[Exception] = aiohttp.ClientConnectorError,
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        made = await super()._create_direct_connection(
            req, traces, timeout, client_error=client_error
        )
        exchange = _EXCHANGE.get()
        if exchange is not None and client_error is aiohttp.ClientProxyConnectionError:
            exchange.at_proxy = False  # connected: a deadline from now on is the endpoint's
        return made

    async def _start_tls_connection(
        self,
        underlying_transport: asyncio.Transport,
        req: ClientRequest,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
        client_error: type[Exception] = aiohttp.ClientConnectorError,
    ) -> tuple[asyncio.BaseTransport, ResponseHandler]:
        exchange = _EXCHANGE.get()
        if exchange is not None:
            exchange.tunnelled = True
            if self._egress is not None:
                self._egress.seen.let_through()  # the proxy answered the CONNECT 2xx
        return await super()._start_tls_connection(
            underlying_transport, req, timeout, client_error
        )


class AiohttpSender:
    """POSTs deliveries through one aiohttp session, every address policy-checked."""

    def __init__(
        self,
        *,
        timeout_s: float,
        concurrency: int,
        policy: AddressPolicy,
        user_agent: str,
        max_response_bytes: int = 65536,
        metrics: Metrics | None = None,
        proxy_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``proxy_url``: ``delivery.proxy_url`` (ValueError when malformed); ``ssl_context``:
        the context https targets are checked with (default: the system's trust store)."""
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._policy = policy
        self._cap = max_response_bytes
        self._timeout_error = f"timed out after {float(timeout_s)} s"
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._metrics = metrics
        self._proxy = Proxy.parse(proxy_url) if proxy_url else None
        # session.post's proxy arguments for https targets (the credentials go on the CONNECT)
        # and http ones (on the request itself, which the proxy forwards without them)
        self._via_https: dict[str, Any] = {}
        self._via_http: dict[str, Any] = {}
        self._proxy_auth: dict[str, str] = {}
        if self._proxy is not None:
            self._via_https["proxy"] = self._via_http["proxy"] = self._proxy.url
            if self._proxy.authorization is not None:
                self._proxy_auth["Proxy-Authorization"] = self._proxy.authorization
                self._via_https["proxy_headers"] = self._proxy_auth
        self._ssl_context = ssl_context
        self.stale_retries = 0  # POSTs sent again after a kept-alive connection closed on them
        if metrics is not None:
            metrics.inc(STALE_RETRIES_METRIC, 0)

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
        """Get ready to send; call once, inside the event loop that will send."""
        if self._session is not None:
            raise RuntimeError("the sender is already started")
        trusted = (self._proxy.host,) if self._proxy is not None else ()
        connector = _Connector(
            cap=self._cap,
            proxy=self._proxy,
            resolver=GuardedResolver(self._policy, trusted_hosts=trusted),
            ssl=self._ssl_context or ssl.create_default_context(),
            limit=self._concurrency,
            ttl_dns_cache=_DNS_CACHE_TTL_S,
            keepalive_timeout=_IDLE_S,
        )
        wide = HEAD_LIMIT_BYTES + 8 * self._cap + HEAD_LIMIT_BYTES  # our count decides first
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
            headers={
                "User-Agent": self._user_agent,
                "Content-Type": "application/json",
                "Accept-Encoding": "identity",
            },
            skip_auto_headers=("Accept",),
            max_line_size=wide,
            max_field_size=wide,
            max_headers=HEAD_LIMIT_BYTES,
            raise_for_status=False,
        )

    async def close(self) -> None:
        """Close every connection; safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def attempt(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        keep_body: int = 0,
        channel: Channel = PLAIN,
    ) -> Outcome:
        """POST ``body`` to ``url`` once; never raises except ``CancelledError``. The
        outcome's ``body`` keeps the answer's first ``keep_body`` bytes; ``channel`` is the
        webhook's own TLS context (channel.py: aiohttp pools connections by context too)."""
        started = time.monotonic()
        session = self._session
        if session is None:
            raise RuntimeError("the sender is not started")
        try:
            target = http1.parse_target(url)
        except ValueError as exc:
            return Outcome(None, f"invalid URL: {exc}", _ms_since(started), None)
        refused = self._policy.literal_refusal(target.host)
        if refused is not None:
            error = str(TargetRefused(target.host, target.host, refused))
            return Outcome(None, error, _ms_since(started), None)
        try:
            for name, value in headers.items():
                check_header(name, value)
                value.encode("latin-1")  # as the native client writes it: else a ValueError
        except ValueError as exc:
            return Outcome(None, f"invalid request: {exc}", _ms_since(started), None)
        if "@" in url:  # as the native client: credentials in the URL are never sent
            url = str(URL(url).with_user(None))
        exchange = _Exchange()
        headers = self._route(target, headers, exchange, channel)
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await self._exchange(session, url, body, headers, exchange)
        except TimeoutError:
            return self._timed_out(started, at_proxy=exchange.at_proxy)
        except (
            OSError,
            aiohttp.ClientError,
            http1.MalformedAnswer,
            http1.Oversized,
            ssl.CertificateError,
            http1.Stated,
        ) as exc:
            return _failed(exc, target, started)
        outcome = answer_outcome(answer, started, keep_body)
        if self._proxy is not None:
            proxy_challenge(outcome, answer, self._proxy, target)
        return outcome

    def _route(
        self,
        target: http1.Target,
        headers: Mapping[str, str],
        exchange: _Exchange,
        channel: Channel,
    ) -> Mapping[str, str]:
        """Through the egress proxy: its arguments for ``session.post`` in ``exchange``, and
        the headers (with the proxy's credentials for an http target, forwarded without them).
        Without a proxy: the headers as they are. A webhook's own SSL context joins the
        arguments (aiohttp keeps connections made with it apart)."""
        if self._proxy is not None:
            exchange.via = self._via_https if target.secure else self._via_http
            if not target.secure and self._proxy_auth:
                headers = {**headers, **self._proxy_auth}
        if channel.tls is not None:
            exchange.via = {**exchange.via, "ssl": channel.tls}
        return headers

    def _timed_out(self, started: float, *, at_proxy: bool) -> Outcome:
        """The outcome of an attempt past its deadline; ``at_proxy``: while it dialled the
        egress proxy, whose failure it then is."""
        if at_proxy and self._proxy is not None:
            error = str(ProxyFailure(self._proxy, self._timeout_error))
            return Outcome(None, error, _ms_since(started), None, timed_out=True, blame=BLAME)
        return Outcome(None, self._timeout_error, _ms_since(started), None, timed_out=True)

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        exchange: _Exchange,
    ) -> http1.Answer:
        token = _EXCHANGE.set(exchange)
        try:
            try:
                return await _post(session, url, body, headers, self._cap, exchange.via)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                handler = exchange.handler
                stale = exchange.reused and handler is not None and handler.taken == 0
                if not stale or not _closed_early(exc):
                    raise
                # A kept-alive connection closed without a byte of answer: sent once more on
                # another connection, at-least-once delivery, so every such retry is counted.
                self.stale_retries += 1
                if self._metrics is not None:
                    self._metrics.inc(STALE_RETRIES_METRIC)
                return await _post(session, url, body, headers, self._cap, exchange.via)
        finally:
            _EXCHANGE.reset(token)


async def _post(  # noqa: PLR0917 - a private helper of _exchange
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    cap: int,
    via: Mapping[str, Any],
) -> http1.Answer:
    response = await session.post(url, data=body, headers=headers, allow_redirects=False, **via)
    complete = False
    try:
        if response.status == 101:  # noqa: PLR2004 - aiohttp would hand over the connection
            raise http1.MalformedAnswer("the target switched protocols (HTTP 101) unasked")
        kept = bytearray()
        while len(kept) < cap:
            chunk = await response.content.read(min(_READ_CHUNK, cap - len(kept)))
            if not chunk:
                break
            kept += chunk
        complete = response.content.at_eof()
    finally:
        if complete:
            response.release()  # back to the pool when the answer allows keep-alive
        else:
            response.close()  # capped, failed or cut: never drained, never reused
    answer = http1.Answer(response.status, body=kept, complete=True, capped=not complete)
    for name in ("retry-after", "location", "proxy-authenticate"):
        value = response.headers.get(name)
        if value is not None:
            answer.headers[name.encode()] = value.encode("latin-1", errors="replace")
    return answer


def _failed(exc: BaseException, target: http1.Target, started: float) -> Outcome:
    """The outcome of an exchange that failed: the native client's text, and whose it is."""
    blame = exc.blame if isinstance(exc, http1.Stated) else None
    return Outcome(None, _describe(exc, target), _ms_since(started), None, blame=blame)


def _closed_early(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET


def _describe(exc: BaseException, target: http1.Target) -> str:  # noqa: PLR0911 - one per kind
    """The native client's sentence for each way an aiohttp exchange fails."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return http1.describe(exc.certificate_error, target)
    if isinstance(exc, aiohttp.ClientSSLError):  # its text names the SSLContext object
        return http1.describe(exc.os_error, target)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return http1.describe(exc.os_error, target)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return http1.describe(http1.Closed(), target)
    if isinstance(exc, aiohttp.ClientResponseError):  # the head did not parse
        return f"malformed response: {_parse_error(exc)}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        cause = exc.__cause__
        if isinstance(cause, aiohttp.http_exceptions.HttpProcessingError) and not isinstance(
            cause,
            aiohttp.http_exceptions.ContentLengthError
            | aiohttp.http_exceptions.TransferEncodingError,
        ):
            return f"malformed response: {_parse_error(cause)}"
        return http1.describe(http1.CutShort(), target)
    if isinstance(exc, aiohttp.ClientOSError) and isinstance(exc.__cause__, ssl.SSLError):
        return http1.describe(exc.__cause__, target)  # TLS 1.3: a refusal at the first read
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno is not None:
        return http1.describe(OSError(exc.errno, exc.strerror), target)
    return http1.describe(exc, target)


def _parse_error(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = getattr(cause, "message", None) or str(cause)
    return " ".join(str(text).split())[: http1.SNIPPET_CHARS]


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0
