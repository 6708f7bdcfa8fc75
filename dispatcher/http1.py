"""HTTP/1.1 on one connection: the request line, the answer parsed by llhttp, and its bounds.

The wire half of :mod:`dispatcher.sender`. Only this module, ``sender.py`` and
``sender_aiohttp.py`` (which shares its bounds and texts) make HTTP calls (RELIABILITY R14):
the sender owns the pool, the deadline and the address policy, and hands each exchange to a
:class:`Connection` here. A connection writes one request, feeds what comes back to
``httptools`` (llhttp) and keeps the status, the few headers the delivery needs and a capped
prefix of the body, within the bounds below; any bytes that are not a single bounded HTTP/1.1
answer to the request outstanding fail the exchange and close the connection.
:func:`describe` turns each way an exchange fails into the sentence an ``Outcome`` records.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import ssl
from dataclasses import dataclass, field
from typing import Final

import httptools
from yarl import URL

from dispatcher.ssrf import TargetRefused

HEAD_LIMIT_BYTES: Final = 65536  # status line and headers of an answer, 1xx included (R14)
INTERIM_LIMIT: Final = 32  # interim answers (100 Continue, 102 Processing, 103) skipped at most
SNIPPET_CHARS: Final = 200  # the longest piece of an answer quoted in an error

_SCHEMES: Final = frozenset({"http", "https"})
_WANTED: Final = frozenset(
    {b"retry-after", b"location", b"content-length", b"transfer-encoding", b"proxy-authenticate"}
)


class Closed(Exception):  # noqa: N818 - a reason, not an error of ours
    """The target closed the connection before a complete answer."""


class CutShort(Exception):  # noqa: N818
    """The answer's body ended before its framing said it would."""


class MalformedAnswer(Exception):  # noqa: N818
    """The bytes that came back are not an HTTP/1.1 answer."""


class Oversized(Exception):  # noqa: N818
    """The answer passed one of the limits on what is read; the text names it."""


class Stated(Exception):  # noqa: N818
    """A failure whose text says it all (the egress proxy's, ``proxy.py``); ``blame`` is the
    outcome's (None: the endpoint's)."""

    blame: str | None = None


class _Unsolicited(Exception):  # noqa: N818
    """An answer began with no request outstanding."""


@dataclass(slots=True)
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False  # the whole answer arrived (or the body reached the cap)
    capped: bool = False


class Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses the answer with llhttp.

    ``read`` counts the bytes of the current answer and ``budget`` bounds it: first
    ``HEAD_LIMIT_BYTES`` until the final answer's headers are complete, then room for the
    capped body in small chunks plus a head's worth of trailers (``tail``). Checking it costs
    one addition and one comparison per read; only a read that crosses it takes a slow path.
    httptools joins a header that spans reads with ``bytes +=``, which is quadratic in the
    header's size, so the bound also keeps that work small.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.tail = 8 * cap + HEAD_LIMIT_BYTES
        self.read = 0  # bytes of the current answer so far: 0 until any byte arrived
        self.budget = HEAD_LIMIT_BYTES
        self.interims = 0
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer = Answer()
        self.waiter: asyncio.Future[Answer] | None = None
        # made inside the running loop (the protocol factory); asked once, not per request
        self.loop = asyncio.get_running_loop()
        self.headers_done = False
        self.interim = False  # a 1xx answer is being skipped
        self.reusable = False
        self.idle_since = 0.0

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.close()  # bytes no request asked for: the connection is out of step for good
            return
        self.read += len(data)
        if self.read > self.budget:
            self._over_budget(data, waiter)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MalformedAnswer(" ".join(str(exc).split())[:SNIPPET_CHARS]))
        except httptools.HttpParserUpgrade:  # not an HttpParserError: it would escape
            self._fail(MalformedAnswer("the target switched protocols (HTTP 101) unasked"))

    def _over_budget(self, data: bytes, waiter: asyncio.Future[Answer]) -> None:
        """A read that crosses the budget: the head may still end within it, else fail."""
        if self.headers_done:
            text = f"the body's chunk framing and trailers exceed {self.tail} bytes"
            self._fail(Oversized(text))
            return
        room = len(data) - (self.read - self.budget)
        self.read -= len(data) - room
        self._feed(data[:room])
        # The final headers ended within the limit (they raised the budget), or the answer
        # failed: the rest of the read is judged afresh.
        if self.budget > HEAD_LIMIT_BYTES or waiter.done():
            if room < len(data):
                self.data_received(data[room:])
            return
        self._fail(Oversized(f"the status line and headers exceed {HEAD_LIMIT_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.waiter is None or self.waiter.done():
            return
        answer = self.answer
        framed = b"content-length" in answer.headers or b"transfer-encoding" in answer.headers
        if self.headers_done and not framed:
            answer.complete = True  # a body delimited by the end of the connection
            self.waiter.set_result(answer)
        elif self.headers_done:
            self._fail(CutShort())
        elif isinstance(exc, OSError):
            self._fail(exc)
        else:
            self._fail(Closed())

    # -- httptools callbacks --
    def on_message_begin(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            # An answer after the one handed back (pipelined in the same read): stop the parser
            # before it writes into the recorded answer; the connection is closed.
            raise _Unsolicited

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _WANTED:
            self.answer.headers[name] = value

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # noqa: PLR2004 - interim answers (100, 103) are skipped
            self.interim = True
            self.answer.headers.clear()
            self.interims += 1
            if self.interims > INTERIM_LIMIT:
                self._fail(Oversized(f"more than {INTERIM_LIMIT} interim (1xx) responses"))
            return
        self.answer.status = status
        self.headers_done = True
        self.budget = self.read + self.tail

    def on_body(self, chunk: bytes) -> None:
        answer = self.answer
        room = self.cap - len(answer.body)
        if room <= 0 or self.waiter is None or self.waiter.done():
            return
        answer.body += chunk[:room]
        if len(chunk) >= room:
            answer.capped = answer.complete = True  # enough read: the rest is never drained
            self.waiter.set_result(answer)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.waiter is None or self.waiter.done():
            return
        self.answer.complete = True
        self.reusable = bool(self.parser.should_keep_alive())
        self.waiter.set_result(self.answer)

    # -- ours --
    def send(self, data: tuple[bytes, bytes]) -> asyncio.Future[Answer]:
        if self.transport is None or self.transport.is_closing():
            raise Closed
        self.answer = Answer()
        self.headers_done = self.interim = self.reusable = False
        self.read = self.interims = 0
        self.budget = HEAD_LIMIT_BYTES
        self.waiter = self.loop.create_future()
        self.transport.writelines(data)
        return self.waiter

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True, slots=True)
class Target:
    secure: bool
    host: str  # as dialled and checked: IDNA-encoded name or IP literal, no brackets
    port: int
    request_line: bytes  # b"POST /path?query HTTP/1.1\r\nHost: host:port\r\n"
    # the same in absolute form, b"POST http://host:port/path?query HTTP/1.1\r\n...", as an
    # http target's request goes to an egress proxy (proxy.py)
    absolute_line: bytes

    @property
    def origin(self) -> tuple[bool, str, int]:
        return self.secure, self.host, self.port


@functools.lru_cache(maxsize=4096)
def parse_target(url: str) -> Target:
    """The parts of a webhook URL a request needs; ValueError says what is wrong."""
    parsed = URL(url)
    if parsed.scheme not in _SCHEMES:
        raise ValueError(f"scheme {parsed.scheme!r} is not http or https")
    host = parsed.raw_host
    if not host:
        raise ValueError("no host")
    port = parsed.port
    if port is None:
        raise ValueError("no port")
    default = port == (443 if parsed.scheme == "https" else 80)
    authority = f"[{host}]" if ":" in host else host
    if not default:
        authority = f"{authority}:{port}"
    path = parsed.raw_path_qs or "/"
    line = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
    absolute = f"POST {parsed.scheme}://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n"
    return Target(parsed.scheme == "https", host, port, line, absolute.encode("ascii"))


_FIXED_TEXT: Final = (
    (Closed, "the target closed the connection without a complete response"),
    (CutShort, "the response body was cut short or malformed"),
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset by the target"),
)


def describe(exc: BaseException, target: Target) -> str:  # noqa: PLR0911 - one per kind
    """A short sentence for a failed exchange, chosen by the exception's type."""
    if isinstance(exc, TargetRefused | Stated):
        return str(exc)
    if isinstance(exc, MalformedAnswer):
        return f"malformed response: {exc}"
    if isinstance(exc, Oversized):
        return str(exc)
    for kind, text in _FIXED_TEXT:
        if isinstance(exc, kind):
            return text
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS with {target.host} failed: {exc}"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup of {target.host} failed"
    if isinstance(exc, OSError):
        if exc.errno == errno.ECONNRESET:
            return "connection reset by the target"
        return f"cannot reach {target.host}:{target.port}: {exc.strerror or exc}"
    return f"request failed ({type(exc).__name__}): {exc}"
