"""The sender against a hostile raw-socket target: every answer a target can twist.

Each case plays one answer to the first request, then a plain 200 to the next one, and checks
the outcome of the first, that a connection left in a bad state is never reused (the second
request opens a new connection), and that the work is bounded (a flood of header bytes is
refused once the budget is passed, so the target cannot push all of it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

import pytest

from dispatcher.metrics import Metrics
from dispatcher.sender import HEAD_LIMIT_BYTES, INTERIM_LIMIT, STALE_RETRIES_METRIC, Outcome
from dispatcher.sender_aiohttp import AiohttpSender
from dispatcher.ssrf import AddressPolicy
from tests.helpers import eventually

if TYPE_CHECKING:
    from types import TracebackType

    from tests.helpers import MakeSender

TIMEOUT_S = 5.0  # the deadline only ends a case that goes wrong; nothing here waits for it
FLOOD_BYTES = 32 * 1024 * 1024
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` (one byte per write when ``split``); then close when ``close``."""

    data: bytes
    split: bool = False
    close: bool = False


@dataclass(frozen=True, slots=True)
class Flood:
    """Write ``head``, then ``unit`` over and over up to ``total`` bytes, as fast as read."""

    head: bytes
    unit: bytes
    total: int = FLOOD_BYTES


@dataclass(frozen=True, slots=True)
class Swallow:
    """Read the request and close without answering (a target that died mid-request)."""


Act = Send | Flood | Swallow


@dataclass
class Hostile:
    """A raw HTTP/1.1 target on 127.0.0.1: reads each request, answers with the next act."""

    acts: list[Act]
    tls: Send | None = None  # for https: played on every connection instead of HTTP
    accepts: int = 0  # connections accepted
    ended: int = 0  # connections over (closed by either side)
    requests: int = 0  # requests read in full
    pushed: int = 0  # bytes of floods the client took (handed to the socket)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()  # ends each connection's handler at its next read or write
        await eventually(lambda: self.ended == self.accepts, what="the handlers to end")
        await self._server.wait_closed()

    def inject(self, data: bytes) -> None:
        """Write ``data`` now on every open connection, whatever the client is doing."""
        for writer in self._writers:
            writer.write(data)

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        self._writers.add(writer)
        try:
            if self.tls is not None:
                await reader.read(1)  # the ClientHello has begun
                if await _play(self, self.tls, writer):
                    await reader.read()  # a stalled handshake: until the client gives up
                return
            while await _read_request(reader):
                self.requests += 1
                act = self.acts[min(self.requests, len(self.acts)) - 1]
                if isinstance(act, Swallow) or not await _play(self, act, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ended += 1
            self._writers.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bool:
    """Read one request with a Content-Length body; False at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return True


async def _play(hostile: Hostile, act: Act, writer: asyncio.StreamWriter) -> bool:
    """Write one act's bytes; whether the connection goes on to the next request."""
    if isinstance(act, Send):
        for part in (
            [act.data[i : i + 1] for i in range(len(act.data))] if act.split else [act.data]
        ):
            writer.write(part)
            await writer.drain()
            if act.split:
                await asyncio.sleep(0)  # give the client a read between the bytes
        return not act.close
    if isinstance(act, Flood):
        writer.write(act.head)
        block = act.unit * max(1, 65536 // len(act.unit))
        while hostile.pushed < act.total:
            writer.write(block)
            await writer.drain()  # raises once the client has closed the connection
            hostile.pushed += len(block)
        return True
    return False


async def _two_posts(
    make_sender: MakeSender, hostile: Hostile, *, reused: bool, scheme: str = "http"
) -> tuple[Outcome, Outcome]:
    """The hostile first answer, then a second POST: on the same connection when ``reused``,
    else only once the first connection has ended (the client gave it up)."""
    policy = AddressPolicy(allow_private=True)
    async with make_sender(timeout_s=TIMEOUT_S, concurrency=2, policy=policy, user_agent="t") as s:
        first = await s.attempt(hostile.url(scheme), b'{"n": 1}', {})
        if not reused:
            await eventually(
                lambda: hostile.ended == hostile.accepts,
                timeout_s=TIMEOUT_S,
                what="the client to close the connection",
            )
        second = await s.attempt(hostile.url(scheme), b'{"n": 2}', {})
    return first, second


LARGE = b"x" * (HEAD_LIMIT_BYTES + 1024)
FITS = b"x" * (HEAD_LIMIT_BYTES - 1024)
TOO_LARGE = f"the status line and headers exceed {HEAD_LIMIT_BYTES} bytes"

# (case, act, status of the first outcome, start of its error (None: delivered), reused)
CASES: list[tuple[str, Act, int | None, str | None, bool]] = [
    ("split bytes", Send(OK, split=True), 200, None, True),
    ("split chunked", Send(CHUNKED + b"2\r\nok\r\n0\r\n\r\n", split=True), 200, None, True),
    (
        "500 then a pipelined 200",
        Send(b"HTTP/1.1 500 Boom\r\nContent-Length: 4\r\n\r\nboom" + OK),
        500,
        "HTTP 500: boom",
        False,
    ),
    ("200 then a pipelined 500", Send(OK + b"HTTP/1.1 500 No\r\n\r\n"), 200, None, False),
    ("200 then stray bytes", Send(OK + b"\x00junk"), 200, None, False),
    ("body longer than Content-Length", Send(OK + b"EXTRA"), 200, None, False),
    (
        "body shorter than Content-Length",
        Send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", close=True),
        None,
        "the response body was cut short",
        False,
    ),
    ("chunk size not hex", Send(CHUNKED + b"zz\r\nok\r\n"), None, "malformed response", False),
    ("chunk size negative", Send(CHUNKED + b"-1\r\nok\r\n"), None, "malformed response", False),
    (
        "chunk size overflows",
        Send(CHUNKED + b"FFFFFFFFFFFFFFFFFFFF\r\nok\r\n"),
        None,
        "malformed response",
        False,
    ),
    (
        "chunk longer than its size",
        Send(CHUNKED + b"1\r\nok\r\n0\r\n\r\n"),
        None,
        "malformed response",
        False,
    ),
    (
        "status line too long",
        Send(b"HTTP/1.1 200 " + LARGE + b"\r\nContent-Length: 2\r\n\r\nok"),
        None,
        TOO_LARGE,
        False,
    ),
    (
        "header too long",
        Send(b"HTTP/1.1 200 OK\r\nX-Big: " + LARGE + b"\r\nContent-Length: 2\r\n\r\nok"),
        None,
        TOO_LARGE,
        False,
    ),
    (
        "header just within the limit",
        Send(b"HTTP/1.1 200 OK\r\nX-Big: " + FITS + b"\r\nContent-Length: 2\r\n\r\nok"),
        200,
        None,
        True,
    ),
    (
        "header within the limit, body past it",
        Send(
            b"HTTP/1.1 200 OK\r\nX-Big: " + FITS + b"\r\nContent-Length: 4096\r\n\r\n" + b"b" * 4096
        ),
        200,
        None,
        True,
    ),
    (
        "a few interim answers",
        Send(
            b"HTTP/1.1 100 Continue\r\n\r\n" * 3 + b"HTTP/1.1 103 Early\r\nLink: </a>\r\n\r\n" + OK
        ),
        200,
        None,
        True,
    ),
    (
        "interim answers past the limit",
        Send(b"HTTP/1.1 100 Continue\r\n\r\n" * (INTERIM_LIMIT + 1) + OK),
        None,
        f"more than {INTERIM_LIMIT} interim (1xx) responses",
        False,
    ),
    (
        "101 Switching Protocols",
        Send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n" + OK),
        None,
        "malformed response: the target switched protocols",
        False,
    ),
    ("flood: status line", Flood(b"HTTP/1.1 200 ", b"x"), None, TOO_LARGE, False),
    ("flood: one header", Flood(b"HTTP/1.1 200 OK\r\nX-Big: ", b"x"), None, TOO_LARGE, False),
    ("flood: many headers", Flood(b"HTTP/1.1 200 OK\r\n", b"X-N: 1\r\n"), None, TOO_LARGE, False),
    (
        "flood: 100 Continue",
        Flood(b"", b"HTTP/1.1 100 Continue\r\n\r\n"),
        None,
        f"more than {INTERIM_LIMIT} interim (1xx) responses",
        False,
    ),
    (
        "flood: 102 Processing with headers",
        Flood(b"", b"HTTP/1.1 102 Processing\r\nX-Pad: " + b"p" * 4000 + b"\r\n\r\n"),
        None,
        TOO_LARGE,
        False,
    ),
    (
        "flood: trailer",
        Flood(CHUNKED + b"2\r\nok\r\n0\r\nX-Trailer: ", b"x"),
        None,
        "the body's chunk framing and trailers exceed",
        False,
    ),
    (
        "flood: chunk extension",
        Flood(CHUNKED + b"2;ext=", b"x"),
        None,
        "the body's chunk framing and trailers exceed",
        False,
    ),
]


# aiohttp's parser drops a complete answer when bytes that do not parse follow it in the same
# read: the attempt fails, naming the cause, and is retried (a duplicate, never a loss).
AIOHTTP_DIFFERS: dict[str, tuple[int | None, str | None]] = {
    "200 then stray bytes": (None, "malformed response: Bad status line"),
    "body longer than Content-Length": (None, "malformed response: Bad status line"),
}


@pytest.mark.parametrize(
    ("case", "act", "status", "error", "reused"),
    [pytest.param(*case, id=case[0]) for case in CASES],
)
async def test_hostile_answer(
    make_sender: MakeSender,
    case: str,
    act: Act,
    status: int | None,
    error: str | None,
    reused: bool,
) -> None:
    """Each twisted answer gets the right outcome, bounded work and no reuse of a bad connection."""
    if make_sender is AiohttpSender and case in AIOHTTP_DIFFERS:
        status, error = AIOHTTP_DIFFERS[case]
    async with Hostile([act, Send(OK)]) as hostile:
        first, second = await _two_posts(make_sender, hostile, reused=reused)
    assert first.status == status
    if error is None:
        assert first.error is None
    else:
        assert first.error is not None
        assert first.error.startswith(error), first.error
    assert not first.timed_out
    assert second.status == 200  # the next request is answered on a sound connection
    assert hostile.accepts == (1 if reused else 2)
    if isinstance(act, Flood):
        assert hostile.pushed < act.total  # the client stopped reading once past the budget


TLS_CASES: list[tuple[str, Send]] = [
    ("closed during the handshake", Send(b"", close=True)),
    ("plain HTTP instead of TLS", Send(OK, close=True)),
    ("a cut TLS record", Send(b"\x16\x03\x03\x00\x40\x02\x00\x00", close=True)),
    ("garbage records", Send(b"\x15\x03\x03\x00\x02\x02\x28" + b"\xff" * 64, close=True)),
]


@pytest.mark.parametrize("act", [pytest.param(c[1], id=c[0]) for c in TLS_CASES])
async def test_tls_failing_mid_handshake(make_sender: MakeSender, act: Send) -> None:
    """A TLS handshake that breaks off is a failed attempt, and nothing half-open is reused."""
    async with Hostile([], tls=act) as hostile:
        first, second = await _two_posts(make_sender, hostile, reused=False, scheme="https")
    for outcome in (first, second):
        assert outcome.status is None
        assert outcome.error is not None
        assert not outcome.timed_out
        assert outcome.error.startswith(
            ("TLS with 127.0.0.1 failed", "connection reset by the target", "the target closed")
        ), outcome.error
    assert hostile.accepts == 2


async def test_stale_keep_alive_retry_is_counted(make_sender: MakeSender) -> None:
    """A POST sent again after a kept-alive connection closed without answering is counted."""
    metrics = Metrics()
    policy = AddressPolicy(allow_private=True)
    async with (
        Hostile([Send(OK), Swallow(), Send(OK)]) as hostile,
        make_sender(
            timeout_s=TIMEOUT_S, concurrency=2, policy=policy, user_agent="t", metrics=metrics
        ) as sender,
    ):
        assert (await sender.attempt(hostile.url(), b"{}", {})).status == 200
        outcome = await sender.attempt(hostile.url(), b"{}", {})
        assert sender.stale_retries == 1
    assert outcome.status == 200
    assert hostile.requests == 3  # the target read the second POST twice: at least once
    assert hostile.accepts == 2
    assert metrics.get(STALE_RETRIES_METRIC) == 1
    assert f"# HELP {STALE_RETRIES_METRIC} POSTs sent again" in metrics.render()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(OK, id="a whole answer"),
        pytest.param(b"HTTP/1.1 500 Bo", id="the start of an answer"),
        pytest.param(b"\r\n", id="a line break"),
    ],
)
async def test_bytes_on_an_idle_connection_close_it(make_sender: MakeSender, data: bytes) -> None:
    """Bytes a kept-alive connection receives with no request outstanding retire it for good."""
    policy = AddressPolicy(allow_private=True)
    async with (
        Hostile([Send(OK)]) as hostile,
        make_sender(timeout_s=TIMEOUT_S, concurrency=2, policy=policy, user_agent="t") as sender,
    ):
        assert (await sender.attempt(hostile.url(), b"{}", {})).status == 200
        hostile.inject(data)
        await eventually(lambda: hostile.ended == 1, what="the client to close the connection")
        outcome = await sender.attempt(hostile.url(), b"{}", {})
    assert outcome.status == 200
    assert hostile.accepts == 2


async def test_tls_handshake_that_stalls_times_out(make_sender: MakeSender) -> None:
    """A target that accepts TCP and never answers the ClientHello is cut at the deadline."""
    policy = AddressPolicy(allow_private=True)
    async with (
        Hostile([], tls=Send(b"")) as hostile,
        make_sender(timeout_s=0.5, concurrency=2, policy=policy, user_agent="t") as sender,
    ):
        outcome = await sender.attempt(hostile.url("https"), b"{}", {})
        await eventually(lambda: hostile.ended == 1, what="the client to close the connection")
    assert outcome.timed_out
    assert outcome.status is None
