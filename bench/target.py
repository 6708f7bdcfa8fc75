"""A fast HTTP/1.1 target for the benchmark: counts arrivals and their publish-to-arrival latency.

A bare asyncio protocol on uvloop (keep-alive, Content-Length bodies), so the target costs far
less CPU than any sender it measures. Paths:

- ``POST /ok/<n>``    answers 200
- ``POST /flaky/<n>`` answers 500 for a ``--fail`` fraction of requests, drawn per attempt, else
  200; a job (its ``seq``) answered 500 ``--max-fails`` times (3) is answered 200 next, so every
  job is delivered within a few retries whatever the system's attempt limit and backoff. Every
  request (any answer) is counted, and the first one of each job is timed: ``/stats`` gives the
  busy phase of a failing backlog, from the first request to the last job's first attempt
- ``POST /hang/<n>``  never answers (the connection is held)
- ``POST /slow/<n>``  answers 500 after ``--slow-s`` seconds
- ``POST /slowok/<n>`` answers 200 after ``--slow-s`` seconds (not counted in ``/stats``)
- ``POST /lat/<n>``   answers 200 after ``--lat-s`` seconds (20 ms), counted when answered
- ``POST /tail/<n>``  the same, but a ``--tail-share`` (2%) of requests, drawn from a generator
  seeded with ``--seed``, answer after ``--tail-s`` seconds (400 ms): an ordinary p99 tail
- ``GET /stats``      JSON: arrivals (2xx), distinct ``seq`` (``unique``, their lowest and highest),
  failures, duplicates, body sizes (smallest, largest), latencies in ms (sampled), per-path
  counts, the most ``/lat/`` and ``/tail/`` requests held at once (``peak_held``), and of
  ``/flaky/``: ``requests`` (any answer), ``first_attempts`` (distinct ``seq``),
  ``first_request_at``, ``last_first_at`` (the latest first attempt of a job) and
  ``requests_to_last_first`` (requests up to and including it)
- ``GET /arrivals``   with ``--record``: every request as ``[path, seq, t, arrival]``, any path
- ``POST /reset``     clears the counters

Bodies are JSON with ``t`` (unix seconds at publish) and ``seq``; latency is arrival - ``t``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass

import orjson
import uvloop

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
FAIL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"
MAX_SAMPLES = 200_000
HELD = {"hang": None, "slow": FAIL, "slowok": OK}  # paths answered late (or never), by kind
TIMED = {"lat", "tail"}  # paths answered 200 after a delay, counted when answered


@dataclass(frozen=True, slots=True)
class Tail:
    """The delays of ``/lat/`` and ``/tail/``, and the seeded draw of the slow ones."""

    lat_s: float = 0.02
    tail_s: float = 0.4
    share: float = 0.02
    rng: random.Random = random.Random(1)  # noqa: RUF009  # one generator for every connection

    def delay(self, kind: str) -> float:
        if kind == "tail" and self.rng.random() < self.share:
            return self.tail_s
        return self.lat_s


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ok = 0
        self.failed = 0
        self.latencies_ms: list[float] = []
        self.seen: set[object] = set()
        self.tried: dict[object, int] = {}  # /flaky/: 500s answered, by seq, for every seq asked
        self.requests = 0  # /flaky/ requests, any answer
        self.first_request_at = 0.0
        self.last_first_at = 0.0  # the latest first request of a seq
        self.requests_to_last_first = 0
        self.body_min = 0
        self.body_max = 0
        self.duplicates = 0
        self.paths: Counter[str] = Counter()
        self.first_at = 0.0
        self.last_at = 0.0
        self.arrivals: list[tuple[str, object, object, float]] = []
        self.held = 0  # /lat/ and /tail/ requests not answered yet
        self.peak_held = 0


class Target(asyncio.Protocol):
    def __init__(
        self, stats: Stats, fail: float, slow_s: float = 1.0, record: bool = False,
        tail: Tail | None = None, *, max_fails: int = 3,
    ) -> None:
        self.stats = stats
        self.fail = fail
        self.max_fails = max_fails
        self.slow_s = slow_s
        self.record = record
        self.tail = tail or Tail()
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
        if path in {"/stats", "/arrivals"}:
            data = _stats_json(self.stats) if path == "/stats" else self.stats.arrivals
            payload = orjson.dumps(data)
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
        if self.record:
            self.stats.arrivals.append(_arrival(path, body, time.time()))
        if kind in HELD:
            self._hold(HELD[kind])
            return
        if kind in TIMED:
            self.stats.held += 1
            self.stats.peak_held = max(self.stats.peak_held, self.stats.held)
            asyncio.get_running_loop().call_later(
                self.tail.delay(kind), self._answer_timed, path, body)
            return
        if kind == "flaky" and self._fails(self._attempt(body)):
            self.stats.failed += 1
            self.transport.write(FAIL)
            return
        self._count_ok(path, body)
        self.transport.write(OK)

    def _count_ok(self, path: str, body: bytes) -> None:
        now = time.time()
        stats = self.stats
        stats.ok += 1
        if not stats.first_at:
            stats.first_at = now
        stats.last_at = now
        stats.paths[path] += 1
        size = len(body)
        stats.body_min = min(stats.body_min, size) if stats.body_min else size
        stats.body_max = max(stats.body_max, size)
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

    def _attempt(self, body: bytes) -> object:
        """Count a ``/flaky/`` request and time it if it is its job's first; returns the ``seq``."""
        now = time.time()
        stats = self.stats
        stats.requests += 1
        if not stats.first_request_at:
            stats.first_request_at = now
        try:
            key = orjson.loads(body).get("seq")
        except (ValueError, AttributeError):
            key = None
        if key not in stats.tried:
            stats.tried[key] = 0
            stats.last_first_at = now
            stats.requests_to_last_first = stats.requests
        return key

    def _fails(self, key: object) -> bool:
        """Whether this attempt answers 500: drawn, unless its job already failed ``max_fails``."""
        tried = self.stats.tried
        if random.random() >= self.fail or tried[key] >= self.max_fails:
            return False
        tried[key] += 1
        return True

    def _hold(self, answer: bytes | None) -> None:
        """Answer ``slow_s`` from now, or never (``None``); not counted as an arrival."""
        if answer is None:
            return
        if answer is FAIL:
            self.stats.failed += 1
        asyncio.get_running_loop().call_later(self.slow_s, self._answer_late, answer)

    def _answer_timed(self, path: str, body: bytes) -> None:
        self.stats.held -= 1
        if self.transport is not None and not self.transport.is_closing():
            self._count_ok(path, body)
            self.transport.write(OK)

    def _answer_late(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


def _arrival(path: str, body: bytes, now: float) -> tuple[str, object, object, float]:
    """What ``--record`` keeps of a request: its path, ``seq``, ``t`` (publish) and arrival."""
    try:
        data = orjson.loads(body)
        return path, data.get("seq"), data.get("t"), now
    except (ValueError, AttributeError):
        return path, None, None, now


def _stats_json(stats: Stats) -> dict[str, object]:
    return {
        "ok": stats.ok,
        "unique": len(stats.seen),
        "seq_min": min((k for k in stats.seen if isinstance(k, int)), default=None),
        "seq_max": max((k for k in stats.seen if isinstance(k, int)), default=None),
        "body_min": stats.body_min,
        "body_max": stats.body_max,
        "failed": stats.failed,
        "duplicates": stats.duplicates,
        "first_at": stats.first_at,
        "last_at": stats.last_at,
        "latencies_ms": stats.latencies_ms,
        "paths": dict(stats.paths),
        "peak_held": stats.peak_held,
        "requests": stats.requests,
        "first_attempts": len(stats.tried),
        "first_request_at": stats.first_request_at,
        "last_first_at": stats.last_first_at,
        "requests_to_last_first": stats.requests_to_last_first,
    }


async def serve(
    port: int, fail: float, slow_s: float = 1.0, record: bool = False, tail: Tail | None = None,
    *, max_fails: int = 3,
) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Target(stats, fail, slow_s, record, tail, max_fails=max_fails), "127.0.0.1", port,
        backlog=4096,
    )
    print(f"target listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail", type=float, default=0.2)
    parser.add_argument("--slow-s", type=float, default=1.0, help="delay of /slow/ answers")
    parser.add_argument("--record", action="store_true", help="keep every request for /arrivals")
    parser.add_argument("--lat-s", type=float, default=0.02, help="delay of /lat/ and /tail/")
    parser.add_argument("--tail-s", type=float, default=0.4, help="delay of /tail/'s slow ones")
    parser.add_argument("--tail-share", type=float, default=0.02, help="share of slow /tail/")
    parser.add_argument("--seed", type=int, default=1, help="of the /tail/ draw")
    parser.add_argument("--max-fails", type=int, default=3, help="500s per job on /flaky/")
    args = parser.parse_args()
    tail = Tail(args.lat_s, args.tail_s, args.tail_share, random.Random(args.seed))
    uvloop.run(serve(args.port, args.fail, args.slow_s, args.record, tail,
                     max_fails=args.max_fails))


if __name__ == "__main__":
    main()
