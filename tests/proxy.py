"""A forward proxy on 127.0.0.1 for tests: CONNECT tunnels and absolute-form forwarding.

    async with ConnectProxy(credentials=("user", "pa:ss")) as proxy:
        sender = Sender(..., proxy_url=proxy.url_with("user", "pa:ss"))
        ...
        assert proxy.connects == 1

It counts what it carries (``connects``: CONNECT tunnels opened, ``forwards``: absolute-form
requests forwarded, ``upstream``: connections it opened to targets), records each request
line and ``Proxy-Authorization``, answers 407 without the right credentials, and can be told
to answer every CONNECT with another status (``connect_status``), never (``hang``), or to
misbehave (``connect_answer``: raw bytes written instead of an answer, then the connection
closed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

__all__ = ["ConnectProxy", "unaccepting_port"]

_HEAD_LIMIT = 65536


class ConnectProxy:
    """An HTTP/1.1 forward proxy on 127.0.0.1 at an ephemeral port; an async context manager."""

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        connect_status: int = 200,
        connect_answer: bytes | None = None,
        hang: bool = False,
    ) -> None:
        self.credentials = credentials
        self.connect_status = connect_status
        self.connect_answer = connect_answer
        self.hang = hang  # read CONNECTs and never answer (a proxy dialling a dead target)
        self.connects = 0  # CONNECT tunnels opened to a target
        self.forwards = 0  # absolute-form requests forwarded
        self.upstream = 0  # TCP connections opened to targets
        self.accepted = 0  # TCP connections accepted from clients
        self.request_lines: list[str] = []
        self.authorizations: list[str | None] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        """The proxy URL with credentials (percent-encoded where they need it)."""
        from urllib.parse import quote  # noqa: PLC0415 - a test helper's one use

        return f"http://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}"

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
        await self.stop()

    async def stop(self) -> None:
        """Stop listening and drop every connection: the port then refuses connections."""
        if self._server is None:
            return
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def _authorized(self, value: str | None) -> bool:
        if self.credentials is None:
            return True
        pair = ":".join(self.credentials).encode()
        return value == "Basic " + base64.b64encode(pair).decode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        upstream: tuple[str, asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                line, headers = head
                self.request_lines.append(line)
                self.authorizations.append(headers.get("proxy-authorization"))
                method, target, _ = line.split(" ", 2)
                if not self._authorized(headers.get("proxy-authorization")):
                    await _drain_body(reader, headers)
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                    )
                    await writer.drain()
                    continue
                if method == "CONNECT":
                    await self._tunnel(target, reader, writer)
                    return
                upstream = await self._forward(method, target, headers, reader, writer, upstream)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            if upstream is not None:
                upstream[2].close()
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _tunnel(
        self, authority: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.hang:
            await reader.read()  # until the client goes away
            return
        if self.connect_answer is not None:
            writer.write(self.connect_answer)
            await writer.drain()
            return
        if self.connect_status != 200:
            writer.write(b"HTTP/1.1 %d Refused\r\nContent-Length: 0\r\n\r\n" % self.connect_status)
            await writer.drain()
            return
        host, _, port = authority.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        self.upstream += 1
        self.connects += 1
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _forward(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[str, asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        """Forward one absolute-form request in origin form; relay its Content-Length answer."""
        scheme, _, rest = url.partition("://")
        if scheme != "http":
            raise ValueError(f"not an absolute http URL: {url}")
        authority, slash, path = rest.partition("/")
        host, _, port = authority.rpartition(":")
        if upstream is None or upstream[0] != authority:
            if upstream is not None:
                upstream[2].close()
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            self.upstream += 1
            upstream = (authority, up_reader, up_writer)
        _, up_reader, up_writer = upstream
        body = await _drain_body(reader, headers)
        self.forwards += 1
        lines = [f"{method} {slash}{path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k != "proxy-authorization"]
        up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await up_writer.drain()
        answer = await _read_head(up_reader)
        if answer is None:
            raise ConnectionResetError
        status_line, answer_headers = answer
        answer_body = await _drain_body(up_reader, answer_headers)
        out = [status_line, *(f"{k}: {v}" for k, v in answer_headers.items())]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + answer_body)
        await writer.drain()
        return upstream


@contextlib.contextmanager
def unaccepting_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose accept queue is full: a connection to it gets no answer to its
    handshake (a proxy too busy to accept), until the block ends."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # fill the accept queue: further SYNs are dropped
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise ValueError("head too long") from None
    if len(raw) > _HEAD_LIMIT:
        raise ValueError("head too long")
    line, *rest = raw.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers: dict[str, str] = {}
    for header in rest:
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    return line, headers


async def _drain_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    length = int(headers.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
