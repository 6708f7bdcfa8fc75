"""Benchmark driver for saq: ``Queue.enqueue`` enqueues, an in-process ``saq.Worker`` works.

Choices that affect the comparison:

- saq has no bulk enqueue (``Queue.map``/``apply`` enqueue and then *wait for results*), so
  ``enqueue`` gathers single enqueues in chunks; saq itself caps in-flight enqueues per Queue at
  ``max_concurrent_ops`` (default 20), which we leave alone.
- ``ttl=-1``: delete a job's hash when it finishes (the default keeps it, with its result, for
  600 s), so Redis holds only unfinished work, as in the other systems.
- ``timeout``: saq cancels a job after ``Job.timeout`` (default 10 s); we raise it above the
  per-request HTTP timeout so a slow target is an HTTP timeout (then a retry) in every system.
- Retries: ``retries=MAX_TRIES`` is saq's total number of attempts. A retried job with a
  ``retry_delay`` goes to a sorted set that the worker's "schedule" upkeep moves back to the
  queue once a second (``timers["schedule"]``, whole seconds only, as it is also a Redis lock
  TTL), so a 0.1 s retry actually waits 0.1-1.1 s. That is saq's default behaviour; we keep it.
  With ``--retry default`` no ``retry_delay`` is given: saq's default 0 puts the job straight
  back on the queue.
- Each of the ``concurrency`` worker tasks holds its own blocking BLMOVE (one Redis connection
  apiece); every state change also PUBLISHes the job status for listeners, which saq always does.
- uvloop, as ``dispatcher run`` uses; saq itself runs on whatever loop it is given.

A saq bug (0.26.4), not the harness's, shows in its runs: ``Worker.start`` sweeps at once (and
every 60 s), and the sweep takes any job in the active list whose stored status is not
``active`` for abandoned. A worker task moves a job to the active list (BLMOVE) before it marks
it active (a separate SET), so the first sweep of a worker started on a backlog catches the
first job or two. For each, in turn: ``abort`` (LREM from queued, SET ``aborting``), then wait
up to 5 s for the job to finish, then retry it if it did not. If the job's own attempt failed
and was retried at once (``retry_delay`` 0: RPUSH onto queued) before that ``abort``, the LREM
finds it, saq finishes it as ``aborted`` and deletes it: the job is lost. If the job completed
first, the 5 s wait misses its notification and the sweep retries it: a duplicate delivery. The
sink's check reports both (a run missing an id is an error; duplicates are counted).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import uvloop
from saq import Queue, Worker
from saq.types import Context

from bench.systems.common import (
    MAX_TRIES,
    RETRY_DELAY_S,
    paced,
    parse,
    payload,
    report,
    sizes,
    targets,
)

QUEUE = "bench"
BATCH = 256
# Same per-request limit as dispatcher's default delivery.timeout_s.
HTTP_TIMEOUT_S = 15.0
JOB_TIMEOUT_S = 20
HEADERS = {"content-type": "application/json"}
JOB_OPTIONS: dict[str, Any] = {"retries": MAX_TRIES, "timeout": JOB_TIMEOUT_S, "ttl": -1}


def job_options(retry: str) -> dict[str, Any]:
    """``retry_delay`` 0.1 s, or saq's default (0: the job goes back on the queue at once)."""
    return {**JOB_OPTIONS, "retry_delay": RETRY_DELAY_S} if retry == "fixed" else JOB_OPTIONS


async def _queue(redis: str) -> Queue:
    queue = Queue.from_url(redis, name=QUEUE)
    await queue.connect()
    return queue


async def enqueue(redis: str, urls: list[str], n: int, size: tuple[int, int], retry: str) -> None:
    queue = await _queue(redis)
    options = job_options(retry)
    try:
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            await asyncio.gather(
                *(
                    queue.enqueue(
                        "deliver", url=urls[i % len(urls)], payload=payload(i, *size), **options
                    )
                    for i in range(start, min(n, start + BATCH))
                )
            )
        report(n, started)
    finally:
        await queue.disconnect()


async def produce(
    redis: str, urls: list[str], rate: float, seconds: float, size: tuple[int, int], *, retry: str
) -> None:
    queue = await _queue(redis)
    options = job_options(retry)
    try:
        started = time.perf_counter()

        async def send(i: int) -> None:
            await queue.enqueue(
                "deliver", url=urls[i % len(urls)], payload=payload(i, *size), **options
            )

        report(await paced(rate, seconds, send), started)
    finally:
        await queue.disconnect()


class Ctx(Context, total=False):
    session: aiohttp.ClientSession


class DeliveryError(Exception):
    """A non-2xx answer or a transport error; saq retries the job while attempts remain."""


async def deliver(ctx: Ctx, *, url: str, payload: dict[str, object]) -> None:
    session = ctx["session"]
    try:
        async with session.post(url, data=orjson.dumps(payload), headers=HEADERS) as resp:
            await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DeliveryError(f"{url}: {exc!r}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"{url}: HTTP {status}")


async def _work(redis: str, concurrency: int) -> None:
    async def startup(ctx: Ctx) -> None:
        ctx["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
        )

    async def shutdown(ctx: Ctx) -> None:
        session = ctx.get("session")
        if session is not None:
            await session.close()

    queue = await _queue(redis)
    worker: Worker[Ctx] = Worker(
        queue,
        functions=[deliver],
        concurrency=concurrency,
        startup=startup,
        shutdown=shutdown,
    )
    try:
        await worker.start()  # saq handles SIGTERM/SIGINT itself and returns after stopping
    finally:
        await queue.disconnect()


def main() -> None:
    args = parse()
    if args.command == "work":
        uvloop.run(_work(args.redis, args.concurrency))
    elif args.command == "enqueue":
        asyncio.run(enqueue(args.redis, targets(args), args.n, sizes(args), args.retry))
    else:
        asyncio.run(produce(args.redis, targets(args), args.rate, args.seconds, sizes(args),
                            retry=args.retry))


if __name__ == "__main__":
    main()
