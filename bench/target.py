"""A fast HTTP/1.1 target for the benchmark: counts arrivals and their publish-to-arrival latency.

A bare asyncio protocol on uvloop (keep-alive, Content-Length bodies), so the target costs far
less CPU than any sender it measures. Paths:

- ``POST /ok/<n>``    answers 200
- ``POST /flaky/<n>`` answers 500 for a ``--fail`` fraction of requests, else 200
- ``POST /hang/<n>``  never answers (the connection is held)
- ``GET /stats``      JSON: arrivals (2xx), failures, latencies in ms (sampled), per-path counts
- ``POST /reset``     clears the counters

Bodies are JSON with ``t`` (unix seconds at publish) and ``seq``; latency is arrival - ``t``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter

import orjson
import uvloop

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
FAIL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"
MAX_SAMPLES = 200_000


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ok = 0
        self.failed = 0
        self.latencies_ms: list[float] = []
        self.seen: set[object] = set()
        self.duplicates = 0
        self.paths: Counter[str] = Counter()
        self.first_at = 0.0
        self.last_at = 0.0


class Target(asyncio.Protocol):
    def __init__(self, stats: Stats, fail: float) -> None:
        self.stats = stats
        self.fail = fail
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end]
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                length = int(lower[at + 15 : lower.find(b"\r\n", at) if lower.find(b"\r\n", at) > 0 else None])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body = self.buffer[head_end + 4 : end]
            self.buffer = self.buffer[end:]
            self.handle(head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        line = head[: head.find(b"\r\n")]
        path = line.split(b" ")[1].decode()
        if path == "/stats":
            payload = orjson.dumps(_stats_json(self.stats))
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(payload)).encode() + b"\r\n\r\n" + payload
            )
            return
        if path == "/reset":
            self.stats.reset()
            self.transport.write(OK)
            return
        kind = path.split("/")[1]
        if kind == "hang":
            return
        if kind == "flaky" and random.random() < self.fail:
            self.stats.failed += 1
            self.transport.write(FAIL)
            return
        now = time.time()
        stats = self.stats
        stats.ok += 1
        if not stats.first_at:
            stats.first_at = now
        stats.last_at = now
        stats.paths[path] += 1
        try:
            data = orjson.loads(body)
            key = data.get("seq")
            if key in stats.seen:
                stats.duplicates += 1
            else:
                stats.seen.add(key)
            if len(stats.latencies_ms) < MAX_SAMPLES:
                stats.latencies_ms.append((now - float(data["t"])) * 1000)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        self.transport.write(OK)


def _stats_json(stats: Stats) -> dict[str, object]:
    return {
        "ok": stats.ok,
        "unique": len(stats.seen),
        "failed": stats.failed,
        "duplicates": stats.duplicates,
        "first_at": stats.first_at,
        "last_at": stats.last_at,
        "latencies_ms": stats.latencies_ms,
        "paths": dict(stats.paths),
    }


async def serve(port: int, fail: float) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Target(stats, fail), "127.0.0.1", port, backlog=4096)
    print(f"target listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail", type=float, default=0.2)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.fail))


if __name__ == "__main__":
    main()
