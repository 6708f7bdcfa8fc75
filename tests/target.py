"""A real HTTP target for tests: records what it receives and plays a script per path.

It is a raw ``asyncio`` server speaking just enough HTTP/1.1 (keep-alive, Content-Length or
chunked request bodies), so it can also misbehave below HTTP: reset the connection, answer
garbage, hang, drip or stream an endless body.

    async with Target() as target:
        target.script("/hook", Reply(500), Reply(429, headers={"Retry-After": "3"}), Reply(200))
        ...
        [request] = await target.wait_for(1)
"""

from __future__ import annotations

import asyncio
import gzip
import http
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self, TypeAlias

from multidict import CIMultiDict

if TYPE_CHECKING:
    import ssl
    from collections.abc import Coroutine, Mapping
    from types import TracebackType

__all__ = [
    "Behaviour",
    "Drip",
    "Garbage",
    "Hang",
    "Huge",
    "Received",
    "Redirect",
    "Reply",
    "Reset",
    "Target",
    "gzip_bomb",
]


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer ``status`` with ``body`` and ``headers`` after ``delay_s``."""

    status: int = 200
    body: bytes = b"ok"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Hang:
    """Never answer; hold the connection until the client goes away."""


@dataclass(frozen=True, slots=True)
class Drip:
    """Send 200 headers, then one body byte every ``interval_s``, forever."""

    interval_s: float = 0.5


@dataclass(frozen=True, slots=True)
class Huge:
    """Answer 200 with a ``size``-byte body, streamed as fast as the client reads it."""

    size: int = 50 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer a redirect to ``location``."""

    location: str
    status: int = 302


@dataclass(frozen=True, slots=True)
class Reset:
    """Drop the connection without answering (an RST when ``rst``, else a plain close)."""

    rst: bool = True


@dataclass(frozen=True, slots=True)
class Garbage:
    """Write bytes that are not HTTP, then close."""

    data: bytes = b"\x00\xffthis is not HTTP at all\r\n\r\n"


Behaviour: TypeAlias = Reply | Hang | Drip | Huge | Redirect | Reset | Garbage


@dataclass(frozen=True, slots=True)
class Received:
    """One request whose body was read in full."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    at: float  # time.monotonic()


_CHUNK = 64 * 1024


class Target:
    """An HTTP server on ``host`` (127.0.0.1) at an ephemeral port; an async context manager.
    With ``ssl_context`` (tests/pki.py's ``server_context``) it serves https."""

    def __init__(
        self, host: str = "127.0.0.1", *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self._ssl = ssl_context
        self.received: list[Received] = []
        self.connections = 0  # TCP connections accepted, whether or not a request followed
        self.active: dict[str, int] = {}  # path -> requests being answered now
        self.peak: dict[str, int] = {}  # path -> most requests answered at once
        self.answers: list[int | None] = []  # the status chosen for received[i], None: no answer
        self.body_bytes: dict[str, int] = {}  # path -> body bytes handed to the socket (Huge)
        self.base_url = ""
        self._scripts: dict[str, deque[Behaviour]] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[object]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._arrived = asyncio.Event()
        self._closing = asyncio.Event()  # set on exit: delayed replies stop waiting

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, 0, ssl=self._ssl)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"{'https' if self._ssl else 'http'}://{self.host}:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is None:
            return
        self._closing.set()
        # No new connections, then let those accepted reach _accept before the server closes:
        # Python 3.11 leaves a connection accepted but not yet made open when its server closes
        # (an unclosed transport: a ResourceWarning that fails whichever test collects it).
        loop = asyncio.get_running_loop()
        for sock in self._server.sockets:
            loop.remove_reader(sock.fileno())
        for _ in range(2):
            await asyncio.sleep(0)
        self._server.close()
        # Closing the transports ends every handler on its own (their reads see EOF);
        # cancelling them instead trips a bug in Python 3.11's start_server callback.
        for writer in self._writers:
            writer.close()
        if self._handlers:
            _, stuck = await asyncio.wait(self._handlers, timeout=5)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the closed transports finish
        self._server = None

    @property
    def port(self) -> int:
        """The port the target listens on."""
        return int(self.base_url.rsplit(":", 1)[1])

    def url(self, path: str = "/hook") -> str:
        """The absolute URL of ``path`` on this target."""
        return self.base_url + path

    def script(self, path: str, *behaviours: Behaviour) -> None:
        """Play ``behaviours`` in order for requests to ``path``, the last one repeating."""
        self._scripts[path] = deque(behaviours)

    def count(self, path: str | None = None) -> int:
        """How many requests (to ``path``, or to any path) were received."""
        return len(self._matching(path))

    async def wait_for(
        self, n: int, path: str | None = None, timeout_s: float = 10
    ) -> list[Received]:
        """The requests (to ``path``) once at least ``n`` arrived; AssertionError after
        ``timeout_s`` naming what did arrive."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(got := self._matching(path)) < n:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            arrived = [(r.method, r.path, r.headers.get("webhook-id")) for r in self.received]
            where = f" to {path}" if path is not None else ""
            raise AssertionError(
                f"expected {n} requests{where} within {timeout_s} s; arrived: {arrived}"
            ) from None
        return got

    def _matching(self, path: str | None) -> list[Received]:
        return [r for r in self.received if path is None or r.path == path]

    def _next(self, path: str) -> Behaviour:
        queue = self._scripts.get(path)
        if not queue:
            return Reply()
        return queue.popleft() if len(queue) > 1 else queue[0]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A new connection, tracked from the start: __aexit__ closes it even if its handler
        never runs (a task cancelled before its first step, as when the loop closes, never
        reaches _serve's finally, and its transport stays open)."""
        if self._closing.is_set():
            writer.close()
            return
        self._writers.add(writer)
        self._handlers.add(asyncio.get_running_loop().create_task(self._serve(reader, writer)))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                path = request.path
                behaviour = self._next(path)
                self.received.append(request)
                self.answers.append(_status_of(behaviour))
                self._arrived.set()
                self.active[path] = self.active.get(path, 0) + 1
                self.peak[path] = max(self.peak.get(path, 0), self.active[path])
                try:
                    if not await self._act(path, behaviour, reader, writer):
                        break
                finally:
                    self.active[path] -= 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if task is not None:
                self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()  # connection_lost runs on the next loop pass

    async def _closed_within(self, delay_s: float) -> bool:
        """Wait ``delay_s``, or less if the target closes meanwhile; True if it did."""
        try:
            async with asyncio.timeout(delay_s):
                await self._closing.wait()
        except TimeoutError:
            return False
        return True

    async def _stream(self, path: str, writer: asyncio.StreamWriter, size: int) -> None:
        """A ``size``-byte answer, counting in ``body_bytes`` what the client's reads let out."""
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"x" * _CHUNK
        for start in range(0, size, _CHUNK):
            part = chunk[: size - start]
            writer.write(part)
            self.body_bytes[path] = self.body_bytes.get(path, 0) + len(part)
            await writer.drain()

    async def _act(
        self,
        path: str,
        behaviour: Behaviour,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Play ``behaviour``; True when the connection may serve another request."""
        match behaviour:
            case Reply(status, body, headers, delay_s):
                if delay_s and await self._closed_within(delay_s):
                    return False  # the target is closing: no answer, the connection ends
                await _respond(writer, status, body, headers)
                return True
            case Redirect(location, status):
                await _respond(writer, status, b"", {"Location": location})
                return True
            case Hang():
                await _until_gone(reader)
            case Drip(interval_s):
                await _while_present(reader, _drip(writer, interval_s))
            case Huge(size):
                await _while_present(reader, self._stream(path, writer, size))
            case Reset(rst):
                if rst:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            case Garbage(data):
                writer.write(data)
                await writer.drain()
        return False


def _status_of(behaviour: Behaviour) -> int | None:
    """The status a behaviour answers with in full (a Huge body is sent whole if read)."""
    match behaviour:
        case Reply(status) | Redirect(_, status):
            return status
        case Huge():
            return 200
    return None


def gzip_bomb(status: int = 200, expands_to: int = 10 * 1024 * 1024) -> Reply:
    """An answer whose body is ``Content-Encoding: gzip``: a few KiB on the wire that inflate
    to ``expands_to`` bytes of ``BOOM``, for a client that decompresses what it reads."""
    body = gzip.compress(b"BOOM" * (expands_to // 4), compresslevel=9, mtime=0)
    return Reply(status, body, {"Content-Encoding": "gzip", "Content-Type": "text/plain"})


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed between requests
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers.add(name.strip().lower(), value.strip())
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    path = target.split("?", 1)[0]
    return Received(method, path, headers, body, time.monotonic())


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return b"".join(parts)


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, headers: Mapping[str, str]
) -> None:
    lines = [f"HTTP/1.1 {status} {_phrase(status)}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


async def _until_gone(reader: asyncio.StreamReader) -> None:
    while await reader.read(_CHUNK):
        pass


async def _while_present(reader: asyncio.StreamReader, work: Coroutine[None, None, None]) -> None:
    """Run ``work`` until it ends or the client goes away, whichever comes first."""
    tasks = {asyncio.ensure_future(work), asyncio.ensure_future(_until_gone(reader))}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _drip(writer: asyncio.StreamWriter, interval_s: float) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
    while True:
        await writer.drain()
        await asyncio.sleep(interval_s)
        writer.write(b".")
