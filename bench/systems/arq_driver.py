"""Benchmark driver for arq: ``ArqRedis.enqueue_job`` enqueues, an in-process ``arq.Worker`` works.

Choices that affect the comparison:

- ``poll_delay``: arq has no blocking pop. Its worker polls the queue's sorted set, starts up to
  ``max_jobs`` due jobs, and once every slot is taken goes back to sleeping ``poll_delay``
  seconds before it looks again. With the 0.5 s default a worker with fast jobs therefore runs at
  most about ``max_jobs / 0.5`` jobs a second however quickly the target answers, and a 0.1 s
  retry waits up to 0.5 s. That measures the default sleep, not the library, so we poll every
  ``POLL_DELAY_S`` instead (arq accepts any value; an idle poll is one ZRANGEBYSCORE). The
  throughput cap, the dead time a run pays while every slot waits on the next poll, and retry
  lateness all scale with this value. Measured on this harness (2 CPUs, instant target):
  backlog throughput was the same at 0.5 s and 0.05 s (~800/s, bound by arq claiming jobs one
  at a time), but ``produce`` at 200/s gave p50 308 ms / p99 499 ms at 0.5 s against
  p50 32 ms / p99 57 ms at 0.05 s: with the default, latency measures the poll interval.
- ``keep_result=0``: do not store a result hash per finished job (the default keeps one for an
  hour), so Redis holds only unfinished work, as in the other systems.
- uvloop, as ``dispatcher run`` uses; arq itself runs on whatever loop it is given.
- arq's own per-job bookkeeping is unchanged: an optimistic WATCH/MULTI to claim each job (one
  at a time, in the poll loop), a retry counter key, and a MULTI to finish it.
- Payloads are pickled by arq's default serializer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import uvloop
from arq import Retry, Worker, create_pool
from arq.connections import ArqRedis, RedisSettings

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

QUEUE = "bench:arq"
BATCH = 256
POLL_DELAY_S = 0.05
# Same per-request limit as dispatcher's default delivery.timeout_s.
HTTP_TIMEOUT_S = 15.0
# On SIGTERM stop picking jobs and let in-flight ones finish, like BullMQ's worker.close(). With
# the plain handler arq cancels them, and its close() then dies on the CancelledError (exit 1,
# on_shutdown skipped, in-progress keys left for job_timeout + 10 s).
SHUTDOWN_WAIT_S = int(HTTP_TIMEOUT_S) + 5
HEADERS = {"content-type": "application/json"}


async def _pool(redis: str) -> ArqRedis:
    return await create_pool(RedisSettings.from_dsn(redis), default_queue_name=QUEUE)


async def enqueue(redis: str, urls: list[str], n: int, size: tuple[int, int]) -> None:
    pool = await _pool(redis)
    try:
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            await asyncio.gather(
                *(
                    pool.enqueue_job("deliver", urls[i % len(urls)], payload(i, *size))
                    for i in range(start, min(n, start + BATCH))
                )
            )
        report(n, started)
    finally:
        await pool.aclose()


async def produce(
    redis: str, urls: list[str], rate: float, seconds: float, size: tuple[int, int]
) -> None:
    pool = await _pool(redis)
    try:
        started = time.perf_counter()

        async def send(i: int) -> None:
            await pool.enqueue_job("deliver", urls[i % len(urls)], payload(i, *size))

        report(await paced(rate, seconds, send), started)
    finally:
        await pool.aclose()


async def deliver(ctx: dict[str, Any], url: str, body: dict[str, object]) -> None:
    session: aiohttp.ClientSession = ctx["session"]
    try:
        async with session.post(url, data=orjson.dumps(body), headers=HEADERS) as resp:
            await resp.read()
            ok = 200 <= resp.status < 300
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    if not ok:
        # arq counts tries itself and fails the job for good after max_tries. Its default
        # (Retry() without defer) runs the job again at once.
        raise Retry(defer=ctx["retry_delay_s"])


def work(redis: str, concurrency: int, retry: str) -> None:
    async def startup(ctx: dict[str, Any]) -> None:
        ctx["retry_delay_s"] = RETRY_DELAY_S if retry == "fixed" else None
        ctx["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        session = ctx.get("session")
        if session is not None:
            await session.close()

    # arq's Worker takes the current event loop in its constructor and drives it in run().
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(
        functions=[deliver],
        queue_name=QUEUE,
        redis_settings=RedisSettings.from_dsn(redis),
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=concurrency,
        max_tries=MAX_TRIES,
        keep_result=0,
        poll_delay=POLL_DELAY_S,
        handle_signals=True,
        job_completion_wait=SHUTDOWN_WAIT_S,
        log_results=False,
    )
    try:
        worker.run()  # returns after SIGTERM/SIGINT, once arq has closed its pool
    finally:
        loop.close()


def main() -> None:
    args = parse()
    if args.command == "work":
        work(args.redis, args.concurrency, args.retry)
    elif args.command == "enqueue":
        asyncio.run(enqueue(args.redis, targets(args), args.n, sizes(args)))
    else:
        asyncio.run(produce(args.redis, targets(args), args.rate, args.seconds, sizes(args)))


if __name__ == "__main__":
    main()
