"""One HTTP attempt at a webhook target, always answered with an :class:`Outcome`.

The sender is the process's one HTTP client (RELIABILITY R14): a keep-alive connection pool
per origin, written on asyncio protocols with ``httptools`` (llhttp) parsing the answers. It
is hand-written because the client is the ceiling of the whole daemon: on this project's
benchmark aiohttp's ``ClientSession`` spends about 125 us of CPU per POST where this path
spends about 25 us (see bench/ and the README), and webhook delivery needs only a small part
of HTTP/1.1: one POST with a body, the status, two headers and a bounded prefix of the body.
It never touches Redis and never logs: the delivery loop decides what an outcome means.
``delivery.http_client = "aiohttp"`` swaps in :mod:`dispatcher.sender_aiohttp`, which keeps
the same guarantees.

Guarantees of :meth:`Sender.attempt`:

- one overall deadline (``timeout_s``) over resolve, connect, TLS, request, headers and the
  body read, so a target that drips one byte at a time cannot outlive it;
- at most ``max_response_bytes`` of the body are kept, never decompressed
  (``Accept-Encoding: identity``); an answer longer than that closes the connection instead of
  being drained;
- the status line and headers (interim 1xx answers included) may take at most
  ``HEAD_LIMIT_BYTES``, at most ``INTERIM_LIMIT`` interim answers are skipped, and the body's
  chunk framing and trailers are bounded too: a larger answer is a failed attempt naming the
  limit, and its connection is closed. Every byte is read at most once into a bounded buffer,
  so the work per answer is linear in what is read and what is read is bounded;
- the first complete answer is the one recorded: bytes that arrive with no request
  outstanding (an extra pipelined answer, stray bytes on an idle connection) close the
  connection, which is never used again;
- redirects are not followed, no cookie is used, and every address dialled passes the
  :class:`~dispatcher.ssrf.AddressPolicy` (names through the
  :class:`~dispatcher.ssrf.GuardedResolver`, IP literals before anything is sent);
- with ``proxy_url`` (``delivery.proxy_url``) every request goes through that proxy
  (:mod:`dispatcher.proxy`): a CONNECT tunnel for https, absolute form for http; IP-literal
  targets are still checked first, names are the proxy's to resolve, and a failure of the
  proxy itself is an outcome with ``blame = "proxy"``;
- a connection is reused only after a complete answer that allows keep-alive;
- every failure, malformed answers included, is an ``Outcome``; only ``CancelledError``
  escapes.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, Self

from dispatcher import http1
from dispatcher.channel import PLAIN, Channel
from dispatcher.http1 import HEAD_LIMIT_BYTES, INTERIM_LIMIT  # bounds attempt() documents
from dispatcher.proxy import BLAME, Dialler, Proxy, ProxyFailure, http_answer, open_tunnel
from dispatcher.retry import parse_retry_after
from dispatcher.ssrf import GuardedResolver, TargetRefused

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from dispatcher.metrics import Metrics
    from dispatcher.ssrf import AddressPolicy

__all__ = [
    "HEAD_LIMIT_BYTES",
    "INTERIM_LIMIT",
    "STALE_RETRIES_METRIC",
    "HttpSender",
    "Outcome",
    "Sender",
    "answer_outcome",
    "check_header",
    "proxy_challenge",
]

STALE_RETRIES_METRIC: Final = "dispatcher_http_stale_connection_retries_total"

_SNIPPET_BYTES: Final = 4 * http1.SNIPPET_CHARS  # enough bytes for 200 UTF-8 characters
# Resolved addresses are cached, and only ever addresses the policy allows, so a cached answer
# is always a checked one: a name that starts resolving to a refused address is refused once
# its entry expires. 10 s keeps a busy target from costing a lookup per new connection.
_DNS_CACHE_TTL_S: Final = 10.0
_IDLE_S: Final = 15.0  # an idle keep-alive connection older than this is closed, not reused
_NAMES_KEPT: Final = 1024  # header names remembered as checked (webhooks' own headers too)
_PROXY_AUTH: Final = 407  # Proxy Authentication Required
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(slots=True)  # not frozen: made once per attempt (faster to build), never changed
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
    #: The answer body's first ``keep_body`` bytes, when ``attempt`` was asked for them (a
    #: test send shows them); empty otherwise, so a delivery copies nothing.
    body: bytes = b""
    #: Whose failure this is when not the endpoint's: ``"proxy"`` (dispatcher.proxy.BLAME)
    #: for a failure of the egress proxy itself, which the breaker and the traffic share ignore.
    blame: str | None = None

    @property
    def delivered(self) -> bool:
        """Whether the target accepted the delivery (a 2xx)."""
        return self.error is None


class HttpSender(Protocol):
    """What the delivery loop needs of a sender: :class:`Sender`, or
    :class:`~dispatcher.sender_aiohttp.AiohttpSender` with ``delivery.http_client = "aiohttp"``."""

    stale_retries: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def attempt(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        keep_body: int = 0,
        channel: Channel = PLAIN,
    ) -> Outcome: ...


class Sender:
    """POSTs deliveries over pooled keep-alive connections, every address policy-checked."""

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
        self._proxy = Dialler(Proxy.parse(proxy_url)) if proxy_url else None
        self._ssl_context = ssl_context
        self._defaults = {  # sent unless the caller gives its own
            "user-agent": f"User-Agent: {user_agent}\r\n".encode("latin-1"),
            "content-type": b"Content-Type: application/json\r\n",
            "accept-encoding": b"Accept-Encoding: identity\r\n",
        }
        self._names: dict[str, str] = {}
        # idle connections by origin (and pool_key, for a webhook with its own TLS settings)
        self._idle: defaultdict[tuple[object, ...], list[http1.Connection]] = defaultdict(list)
        self._busy: set[http1.Connection] = set()
        self._sweep_at = 0.0  # when idle connections are next looked over (_sweep)
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._resolver: GuardedResolver | None = None
        self._tls: ssl.SSLContext | None = None
        self._started = False
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._metrics = metrics
        self.stale_retries = 0  # POSTs sent again after a kept-alive connection closed on them
        if metrics is not None:
            metrics.inc(STALE_RETRIES_METRIC, 0)  # shown from the start, at 0

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
        if self._started:
            raise RuntimeError("the sender is already started")
        self._resolver = GuardedResolver(self._policy)
        self._tls = self._ssl_context or ssl.create_default_context()
        self._loop = asyncio.get_running_loop()  # asked once: each ask is a getpid call
        self._started = True

    async def close(self) -> None:
        """Close every connection; safe to call twice."""
        self._started = False
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in self._busy:
            conn.close()
        self._busy.clear()
        resolver, self._resolver = self._resolver, None
        if resolver is not None:
            await resolver.close()

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
        webhook's own TLS context and pool (channel.py)."""
        started = time.monotonic()
        if not self._started:
            raise RuntimeError("the sender is not started")
        try:
            target = http1.parse_target(url)
        except ValueError as exc:
            return Outcome(None, f"invalid URL: {exc}", _ms_since(started), None)
        refused = self._policy.literal_refusal(target.host)
        if refused is not None:
            error = str(TargetRefused(target.host, target.host, refused))
            return Outcome(None, error, _ms_since(started), None)
        proxy = self._proxy  # the one look at the proxy an attempt without one makes
        line = target.request_line if proxy is None else self._proxy_line(target)
        try:
            request = (line + self._head(headers, len(body)), body)
        except ValueError as exc:
            return Outcome(None, f"invalid request: {exc}", _ms_since(started), None)
        # The deadline, as asyncio.timeout() keeps it but without its per-call objects (it
        # was 6% of a worker's CPU): a timer cancels this task, and a cancellation that the
        # timer caused (and no one else asked for) is the timeout.
        loop = self._loop
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("Sender.attempt runs in a task")
        cancelling = task.cancelling()
        fired: list[bool] = []
        timer = loop.call_at(loop.time() + self._timeout_s, _expire, task, fired)
        try:
            try:
                answer = await self._exchange(target, request, channel)
            finally:
                timer.cancel()
                timed_out = bool(fired) and task.uncancel() <= cancelling
        except asyncio.CancelledError:
            cut_off = proxy is not None and proxy.cut_off(task)
            if timed_out:
                return self._timed_out(started, at_proxy=cut_off)
            raise
        except (
            OSError,
            http1.Closed,
            http1.CutShort,
            http1.MalformedAnswer,
            http1.Oversized,
            ssl.CertificateError,
            http1.Stated,
        ) as exc:
            blame = exc.blame if isinstance(exc, http1.Stated) else None
            error = http1.describe(exc, target)
            return Outcome(None, error, _ms_since(started), None, blame=blame)
        outcome = answer_outcome(answer, started, keep_body)
        if proxy is not None:
            proxy_challenge(outcome, answer, proxy.proxy, target)
        return outcome

    def _timed_out(self, started: float, *, at_proxy: bool) -> Outcome:
        """The outcome of an attempt past its deadline; ``at_proxy``: while it dialled the
        egress proxy, whose failure it then is."""
        if at_proxy and self._proxy is not None:
            error = str(ProxyFailure(self._proxy.proxy, self._timeout_error))
            return Outcome(None, error, _ms_since(started), None, timed_out=True, blame=BLAME)
        return Outcome(None, self._timeout_error, _ms_since(started), None, timed_out=True)

    def _proxy_line(self, target: http1.Target) -> bytes:
        """The request line and Host of a request through the proxy: an https target's as
        usual (inside the tunnel), an http target's in absolute form with the proxy's
        credentials."""
        if target.secure or self._proxy is None:
            return target.request_line
        return target.absolute_line + self._proxy.auth_line

    def _head(self, headers: Mapping[str, str], length: int) -> bytes:
        names = self._names  # header name -> its lower case, once checked to be a token
        given = set()
        lines = []
        for name, value in headers.items():
            lower = names.get(name)
            if lower is None:
                check_header(name, value)
                lower = name.lower()
                if len(names) < _NAMES_KEPT:
                    names[name] = lower
            elif "\r" in value or "\n" in value or "\0" in value:
                check_header(name, value)  # raises, naming the header
            given.add(lower)
            lines.append(f"{name}: {value}\r\n")
        defaults = [line for name, line in self._defaults.items() if name not in given]
        try:
            head = "".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            for name, value in headers.items():
                check_header(name, value)  # raises, naming the header (never its value)
            raise
        return b"".join((*defaults, head, b"Content-Length: %d\r\n\r\n" % length))

    async def _exchange(
        self, target: http1.Target, request: tuple[bytes, bytes], channel: Channel
    ) -> http1.Answer:
        # a webhook with its own TLS settings has its own idle connections: one made with its
        # client certificate never carries another webhook's delivery
        pool = target.origin if not channel.pool_key else (*target.origin, channel.pool_key)
        conn, reused = await self._acquire(target, pool, channel.tls)
        try:
            try:
                answer = await conn.send(request)
            except (http1.Closed, ConnectionResetError):
                if not reused or conn.read:
                    raise
                # A kept-alive connection closed without a byte of answer. Usually the target
                # closed it idle before reading this request, but it may also have processed
                # the POST and closed without answering: sending it once more on a new
                # connection is at-least-once delivery, so every such retry is counted.
                conn.close()
                self._busy.discard(conn)
                self.stale_retries += 1
                if self._metrics is not None:
                    self._metrics.inc(STALE_RETRIES_METRIC)
                conn, reused = await self._acquire(target, pool, channel.tls, fresh=True)
                answer = await conn.send(request)
        except BaseException:
            conn.close()
            self._busy.discard(conn)
            raise
        self._busy.discard(conn)
        if conn.reusable and not answer.capped:
            conn.idle_since = now = time.monotonic()
            if now >= self._sweep_at:
                self._sweep(now)
            self._idle[pool].append(conn)
        else:
            conn.close()
        return answer

    def _sweep(self, now: float) -> None:
        """Close the connections idle past ``_IDLE_S`` in every pool and forget the empty
        pools, at most once per ``_IDLE_S``: a pool no attempt asks for again (an origin no
        longer sent to, a webhook's former TLS settings) would otherwise hold them open."""
        self._sweep_at = now + _IDLE_S
        for pool, conns in list(self._idle.items()):
            kept = [c for c in conns if now - c.idle_since < _IDLE_S]
            for conn in conns:
                if now - conn.idle_since >= _IDLE_S:
                    conn.close()
            if kept:
                self._idle[pool] = kept
            else:
                del self._idle[pool]

    async def _acquire(
        self,
        target: http1.Target,
        pool: tuple[object, ...],
        tls: ssl.SSLContext | None,
        *,
        fresh: bool = False,
    ) -> tuple[http1.Connection, bool]:
        idle = self._idle.get(pool)
        now = time.monotonic()
        while idle and not fresh:
            conn = idle.pop()
            transport = conn.transport
            if (
                conn.reusable
                and transport is not None
                and not transport.is_closing()
                and (now - conn.idle_since < _IDLE_S)
            ):
                self._busy.add(conn)
                return conn, True
            conn.close()
        conn = await self._connect(target, tls or self._tls)
        self._busy.add(conn)
        return conn, False

    async def _connect(
        self, target: http1.Target, tls: ssl.SSLContext | None
    ) -> http1.Connection:
        loop = asyncio.get_running_loop()
        if self._proxy is not None:
            return await self._connect_via(self._proxy, target, loop, tls)
        addresses = [target.host] if _is_literal(target.host) else await self._resolve(target)
        last: OSError | None = None
        for address in addresses:
            try:
                _transport, conn = await loop.create_connection(
                    lambda: http1.Connection(self._cap),
                    address,
                    target.port,
                    ssl=tls if target.secure else None,
                    server_hostname=target.host if target.secure else None,
                )
            except OSError as exc:
                last = exc
                continue
            return conn
        raise last if last is not None else OSError(f"no address for {target.host}")

    async def _connect_via(
        self,
        dialler: Dialler,
        target: http1.Target,
        loop: asyncio.AbstractEventLoop,
        tls: ssl.SSLContext | None,
    ) -> http1.Connection:
        """A connection to ``target`` through the egress proxy: to the proxy itself for an
        http target, through a CONNECT tunnel with TLS to the target for an https one."""
        conn = http1.Connection(self._cap)
        if not target.secure:
            await dialler.connect(loop, lambda: conn)
            return conn
        if tls is None:
            raise RuntimeError("the sender is not started")
        raw = await open_tunnel(loop, dialler, target)
        try:
            transport = await loop.start_tls(raw, conn, tls, server_hostname=target.host)
        except BaseException:
            raw.close()
            raise
        if transport is None:
            raise http1.Closed
        conn.connection_made(transport)  # start_tls does not call it
        return conn

    async def _resolve(self, target: http1.Target) -> list[str]:
        key = (target.host, target.port)
        cached = self._dns.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._resolver is None:
            raise RuntimeError("the sender is not started")
        answers = await self._resolver.resolve(target.host, target.port, socket.AF_UNSPEC)
        addresses = list(dict.fromkeys(a["host"] for a in answers))
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "no address")
        self._dns[key] = (now + _DNS_CACHE_TTL_S, addresses)
        return addresses


def check_header(name: str, value: str) -> None:
    """ValueError when a caller's header could not be sent as one header line."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name!r} is not a token")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"header {name} has a line break in its value")
    if not value.isascii():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            why = f"header {name} has a character outside latin-1 in its value"
            raise ValueError(f"{why}: an HTTP header cannot carry it") from None


@functools.lru_cache(maxsize=4096)
def _is_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def answer_outcome(answer: http1.Answer, started: float, keep_body: int = 0) -> Outcome:
    """The Outcome of a complete answer: its status, error text, Retry-After and, with
    ``keep_body``, that many first bytes of its body."""
    status = answer.status
    retry_after = answer.headers.get(b"retry-after")
    retry_after_s = (
        None
        if retry_after is None
        else parse_retry_after(retry_after.decode("latin-1"), now_s=time.time())
    )
    if 200 <= status < 300:  # noqa: PLR2004
        error = None
    elif 300 <= status < 400 and b"location" in answer.headers:  # noqa: PLR2004
        location = answer.headers[b"location"].decode("latin-1")[: http1.SNIPPET_CHARS]
        error = f"redirect to {location} not followed (HTTP {status})"
    else:
        snippet = bytes(answer.body[:_SNIPPET_BYTES]).decode(errors="replace")
        snippet = snippet[: http1.SNIPPET_CHARS].strip()
        error = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
    outcome = Outcome(status, error, _ms_since(started), retry_after_s)
    if keep_body:
        outcome.body = bytes(answer.body[:keep_body])
    return outcome


def proxy_challenge(
    outcome: Outcome, answer: http1.Answer, proxy: Proxy, target: http1.Target
) -> None:
    """Through the egress proxy, an http target's answer: a 407 asking for credentials
    (``Proxy-Authenticate``) is blamed on the proxy unless the proxy is seen taking ours
    (:func:`dispatcher.proxy.http_answer`). An https target's answer came through a tunnel,
    new or kept: a delivery the proxy let through."""
    if target.secure:
        proxy.seen.let_through()
        return
    challenge = outcome.status == _PROXY_AUTH and b"proxy-authenticate" in answer.headers
    failure = http_answer(proxy, answer.status, challenge=challenge)
    if failure is not None:
        outcome.error = str(failure)
        outcome.blame = BLAME


def _expire(task: asyncio.Task[object], fired: list[bool]) -> None:
    fired.append(True)
    task.cancel()


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0
