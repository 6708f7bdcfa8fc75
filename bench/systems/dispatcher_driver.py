"""Benchmark driver for dispatcher: the Python Client enqueues, ``dispatcher run`` works.

A leading ``--http-client=aiohttp`` (the "dispatcher-aiohttp" system of bench/run.py) runs the
workers with ``delivery.http_client = "aiohttp"``; the default is the native client.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterable

from bench.systems.common import (
    MAX_TRIES,
    RETRY_DELAY_S,
    paced_batches,
    parse,
    payload,
    report,
    sizes,
    targets,
)
from dispatcher import Client

PREFIX = "bench"
BATCH = 256
#: BENCH_ENCRYPTION_KEYS (base64, comma-separated): webhook secrets sealed at rest, in the
#: Client's writes and the workers' reads (security.encryption_keys).
KEYS = [k for k in os.environ.get("BENCH_ENCRYPTION_KEYS", "").split(",") if k]


def _client(redis: str) -> Client:
    return Client.from_url(redis, prefix=PREFIX, **({"encryption_keys": KEYS} if KEYS else {}))


async def _hooks(client: Client, urls: list[str]) -> list[str]:
    tenants = []
    for i, url in enumerate(urls):
        tenant = f"t{i}"
        await client.create_webhook(tenant, url)
        tenants.append(tenant)
    return tenants


async def enqueue(redis: str, urls: list[str], n: int, size: tuple[int, int]) -> None:
    async with _client(redis) as client:
        tenants = await _hooks(client, urls)
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            await _publish(client, tenants, range(start, min(n, start + BATCH)), size)
        report(n, started)


async def produce(
    redis: str, urls: list[str], rate: float, seconds: float, size: tuple[int, int]
) -> None:
    async with _client(redis) as client:
        tenants = await _hooks(client, urls)
        started = time.perf_counter()

        async def send(batch: list[int]) -> None:
            await _publish(client, tenants, batch, size)

        report(await paced_batches(rate, seconds, send), started)


async def _publish(
    client: Client, tenants: list[str], indices: Iterable[int], size: tuple[int, int]
) -> None:
    """One round trip for the batch (Client.publish_many), as a busy producer would."""
    answers = await client.publish_many(
        {"tenant_id": tenants[i % len(tenants)], "event_type": "bench.event",
         "payload": payload(i, *size)}
        for i in indices
    )
    errors = [a for a in answers if not isinstance(a, dict)]
    if errors:
        raise RuntimeError(f"{len(errors)} events not accepted: {errors[0]}")


def work(redis: str, concurrency: int, http_client: str, retry: str = "fixed") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update({
        "DISPATCHER_REDIS_URL": redis,
        "DISPATCHER_REDIS_PREFIX": PREFIX,
        "DISPATCHER_ADMIN_LISTEN": "",
        "DISPATCHER_DELIVERY_CONCURRENCY": str(concurrency),
        "DISPATCHER_DELIVERY_MAX_ATTEMPTS": str(MAX_TRIES),
        "DISPATCHER_SECURITY_ALLOW_PRIVATE_TARGETS": "true",
        "DISPATCHER_LOG_LEVEL": "warning",
        "DISPATCHER_DELIVERY_HTTP_CLIENT": http_client,
    })
    if KEYS:
        env["DISPATCHER_SECURITY_ENCRYPTION_KEYS"] = ",".join(KEYS)
    if retry == "fixed":  # a fixed 0.1 s, as the peers retry; else the default 5 s doubling
        env["DISPATCHER_DELIVERY_BACKOFF_BASE_S"] = env["DISPATCHER_DELIVERY_BACKOFF_CAP_S"] = str(
            RETRY_DELAY_S)
    os.execve(sys.executable, [sys.executable, "-m", "dispatcher", "run"], env)


def main() -> None:
    argv = sys.argv[1:]
    http_client = "native"
    if argv and argv[0].startswith("--http-client="):
        http_client = argv.pop(0).partition("=")[2]
    args = parse(argv)
    if args.command == "work":
        work(args.redis, args.concurrency, http_client, args.retry)
    elif args.command == "enqueue":
        asyncio.run(enqueue(args.redis, targets(args), args.n, sizes(args)))
    else:
        asyncio.run(produce(args.redis, targets(args), args.rate, args.seconds, sizes(args)))


if __name__ == "__main__":
    main()
