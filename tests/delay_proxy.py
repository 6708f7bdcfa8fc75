"""A TCP proxy on loopback that delays every chunk by ``delay_s`` in each direction, order kept:
the distance between two regions, for the multi-region tests and ``bench.regions``.

    proxy = await DelayProxy(redis_port, delay_s=0.04).start()
    ...  # redis://127.0.0.1:{proxy.port}/0 (proxy.url) is 40 ms away each way
    proxy.partition()  # live connections dropped, new ones refused
    proxy.heal()
    await proxy.close()

Each direction of a connection has a reader, which stamps every chunk with the time it may
leave (now + delay), and a sender, which holds it until then: chunks read while earlier ones
wait go out right behind them, so a pipeline of commands costs one round trip, as on a real
link. ``bytes_up`` (client to upstream) and ``bytes_down`` count what the proxy carried.

Also a program, for the benchmark: ``python -m tests.delay_proxy --listen 7001 --to 6379
--delay-ms 40`` (``--to`` may be ``HOST:PORT``; uvloop when installed) runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Self

_CHUNK = 64 * 1024
_EOF = b""  # the end of a direction, queued behind its data


class DelayProxy:
    """Listens on ``host`` (``port`` 0: any free one) and forwards each connection to
    ``upstream_host:upstream_port``, ``delay_s`` later in each direction."""

    def __init__(
        self,
        upstream_port: int,
        delay_s: float = 0.04,
        *,
        upstream_host: str = "127.0.0.1",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.host = host
        self.port = port
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0  # upstream -> client
        self.connections = 0  # accepted while not partitioned
        self.cut = False
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """A Redis URL through the proxy (db 0)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def carried(self) -> int:
        """Bytes carried in both directions so far."""
        return self.bytes_up + self.bytes_down

    def partition(self) -> None:
        """Cut the link: every live connection is dropped (reset) and new ones are closed as
        soon as they are accepted, until `heal`."""
        self.cut = True
        for task in list(self._links):
            task.cancel()

    def heal(self) -> None:
        """Accept and forward connections again."""
        self.cut = False

    async def close(self) -> None:
        """Stop listening, drop every connection, and wait until all of it is gone."""
        if self._server is None:
            return
        server, self._server = self._server, None
        # No new connections; let those already accepted reach _accept before the server closes
        # (Python 3.11 leaves one accepted but not yet made as an unclosed transport).
        loop = asyncio.get_running_loop()
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())
        for _ in range(2):
            await asyncio.sleep(0)
        server.close()
        self.cut = True
        links = list(self._links)
        for task in links:
            task.cancel()
        await asyncio.gather(*links, return_exceptions=True)
        for writer in list(self._writers):
            writer.transport.abort()
        await server.wait_closed()
        await asyncio.sleep(0)  # let the aborted transports finish

    # --- connections ----------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A plain callback (not a coroutine): the link's task is ours, tracked and cancellable."""
        if self.cut or self._server is None:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._link(reader, writer))
        self._links.add(task)
        task.add_done_callback(self._links.discard)

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_w: asyncio.StreamWriter | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            try:
                upstream_r, upstream_w = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                return  # upstream down: the client sees its connection closed
            self._writers.add(upstream_w)
            up: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
            down: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
            tasks = [
                asyncio.create_task(self._read(client_r, up, upstream=True)),
                asyncio.create_task(self._read(upstream_r, down, upstream=False)),
                asyncio.create_task(self._send(up, upstream_w)),
                asyncio.create_task(self._send(down, client_w)),
            ]
            # A connection ends when either side's end (or failure) has been passed on.
            await asyncio.wait(tasks[2:], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (client_w, upstream_w):
                if writer is None:
                    continue
                self._writers.discard(writer)
                if self.cut:
                    writer.transport.abort()
                else:
                    writer.close()

    async def _read(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]],
        *,
        upstream: bool,
    ) -> None:
        data = _EOF
        try:
            while data := await reader.read(_CHUNK):
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                queue.put_nowait((time.monotonic() + self.delay_s, data))
        except OSError:
            pass
        finally:
            queue.put_nowait((time.monotonic() + self.delay_s, _EOF))

    @staticmethod
    async def _send(
        queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # _EOF
                    return
                writer.write(data)
                await writer.drain()


async def _serve(args: argparse.Namespace) -> None:
    host, _, port = args.to.rpartition(":")
    proxy = DelayProxy(
        int(port),
        args.delay_ms / 1000,
        upstream_host=host or "127.0.0.1",
        host=args.host,
        port=args.listen,
    )
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"delay_proxy {proxy.host}:{proxy.port} -> {args.to} +{args.delay_ms:g} ms", flush=True)
    await stop.wait()
    await proxy.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.delay_proxy", description=__doc__)
    parser.add_argument("--listen", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--to", required=True, help="upstream PORT or HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=40.0, help="delay each way")
    args = parser.parse_args(argv)
    try:
        import uvloop  # noqa: PLC0415 - optional, for the benchmark
    except ImportError:
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
