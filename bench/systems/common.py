"""What every Python benchmark driver shares: its command line and the job payload.

Each system under test has a driver with three commands, so the harness treats them alike:

    enqueue --redis URL --targets URL[,URL...] --n N --payload-bytes B [--payload-max M]
        put N jobs in Redis, job i POSTing to targets[i % len(targets)]; print one JSON line
        {"enqueued": N, "seconds": S}
    produce --redis URL --targets ... --rate R --seconds S --payload-bytes B [--payload-max M]
        enqueue at a steady rate (fresh timestamps, for latency); same JSON line at the end
    work --redis URL --concurrency C
        run one worker process until SIGTERM: POST each job's payload as JSON to its URL;
        a non-2xx answer is a failure retried by the system's own mechanism, MAX_TRIES attempts

Every command takes ``--retry fixed|default`` (systems set retry options at enqueue or in the
worker): ``fixed`` retries RETRY_DELAY_S (0.1 s) after a failure in every system; ``default``
keeps each system's own default backoff (dispatcher: 5 s doubling, +-20%; BullMQ, arq and saq:
at once). Both give MAX_TRIES attempts.

Payloads are ``{"seq": i, "t": <unix seconds at enqueue>, "pad": "xx.."}`` of about B bytes, or
of ``payload_size(i, B, M)`` bytes (spread over B..M, the same in every driver) with
``--payload-max``; the target reads ``t`` to measure publish-to-arrival latency.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import orjson

RETRY_DELAY_S = 0.1
MAX_TRIES = 10


RETRIES = ("fixed", "default")


def payload_size(seq: int, low: int, high: int = 0) -> int:
    """Job ``seq``'s payload size: ``low``, or spread over ``low..high`` (bench/node/bullmq.mjs)."""
    if high <= low:
        return low
    return low + seq * 7919 % (high - low + 1)


def payload(seq: int, size: int, size_max: int = 0) -> dict[str, object]:
    size = payload_size(seq, size, size_max)
    base = {"seq": seq, "t": time.time(), "pad": ""}
    pad = max(0, size - len(orjson.dumps(base)))
    base["pad"] = "x" * pad
    return base


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("enqueue", "produce"):
        p = sub.add_parser(name)
        p.add_argument("--redis", required=True)
        p.add_argument("--targets", required=True)
        p.add_argument("--payload-bytes", type=int, default=300)
        p.add_argument("--payload-max", type=int, default=0, help="spread sizes up to this")
        p.add_argument("--retry", choices=RETRIES, default="fixed")
        if name == "enqueue":
            p.add_argument("--n", type=int, required=True)
        else:
            p.add_argument("--rate", type=float, required=True)
            p.add_argument("--seconds", type=float, required=True)
    w = sub.add_parser("work")
    w.add_argument("--redis", required=True)
    w.add_argument("--concurrency", type=int, default=100)
    w.add_argument("--retry", choices=RETRIES, default="fixed")
    return parser.parse_args(argv)


def sizes(args: argparse.Namespace) -> tuple[int, int]:
    """``(payload_bytes, payload_max)`` of an enqueue or produce command, for ``payload``."""
    return args.payload_bytes, args.payload_max


def targets(args: argparse.Namespace) -> list[str]:
    return [t for t in args.targets.split(",") if t]


def report(enqueued: int, started: float) -> None:
    print(orjson.dumps({"enqueued": enqueued, "seconds": time.perf_counter() - started}).decode(),
          flush=True)


async def paced_batches(
    rate: float, seconds: float, send: Callable[[list[int]], Awaitable[object]], tick_s: float = 0.002
) -> int:
    """Every ``tick_s``, hand ``send`` the indices that fell due (for batch producer APIs)."""
    import asyncio

    total = int(rate * seconds)
    start = time.perf_counter()
    pending: set[asyncio.Task[object]] = set()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        if due > sent:
            task = asyncio.ensure_future(send(list(range(sent, due))))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent = due
        await asyncio.sleep(tick_s)
    if pending:
        await asyncio.gather(*pending)
    return total


async def paced(rate: float, seconds: float, send: Callable[[int], object]) -> int:
    """Call ``send(i)`` (a coroutine function) ``rate`` times a second for ``seconds``."""
    import asyncio

    total = int(rate * seconds)
    start = time.perf_counter()
    pending: set[asyncio.Task[object]] = set()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(send(i))  # type: ignore[arg-type]
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return total
