"""Pause memory: the Redis bytes per job of a paused webhook's backlog, against a queued one.

    python -m bench.pause_memory                      # a fresh redis-server, 10,000 jobs
    python -m bench.pause_memory --jobs 50000 --payload-bytes 1000

``--jobs`` events (each ``--payload-bytes`` of payload) are published to one webhook with no
worker running: they are queued, each an entry in the ready stream and a locator in the jobs
hash. The webhook is then paused and a worker claims them: each is held (never attempted, in
the compact form: its entry moved to the webhook's held stream, a locator naming it in the jobs
hash; see dispatcher/queue/lua/_held.lua). Printed: the ``used_memory`` growth per job in each
form, and ``MEMORY USAGE <key> SAMPLES 0`` of the ready stream, the jobs hash, the held zset
and the held stream per job.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any, cast

from dispatcher import Client
from dispatcher.config import DeliveryConfig, JobsConfig
from dispatcher.delivery import Worker
from dispatcher.metrics import Metrics
from dispatcher.sender import Sender
from dispatcher.ssrf import AddressPolicy
from tests.helpers import redis_at


async def _used(client: Client) -> int:
    """Redis's allocated bytes, less its cache of scripts (the worker's scripts load as it
    starts, whatever the number of jobs)."""
    info = cast("dict[str, Any]", await client.store.redis.info("memory"))
    return int(info["used_memory"]) - int(info.get("used_memory_scripts", 0))


async def _sizes(client: Client, webhook_id: str) -> dict[str, int]:
    store = client.store.of_webhook(webhook_id)
    keys = store.keys
    named = {
        "stream": keys.ready("default"),
        "jobs": keys.jobs,
        "held zset": keys.held(webhook_id),  # the full form (jobs attempted before)
        "held stream": keys.ready(f"{webhook_id}|default"),  # the compact form
    }
    return {n: await store.redis.memory_usage(k, samples=0) or 0 for n, k in named.items()}


async def measure(redis_url: str, jobs: int, payload_bytes: int) -> None:
    prefix = f"pausemem{uuid.uuid4().hex[:6]}"
    async with Client.from_url(redis_url, prefix=prefix) as client:
        hook = await client.create_webhook("acme", "http://127.0.0.1:9/never")
        start = await _used(client)
        payload = {"note": "x" * max(payload_bytes - 20, 0)}
        for first in range(0, jobs, 500):
            batch = min(500, jobs - first)
            await client.publish_many(
                [
                    {"tenant_id": "acme", "event_type": "e", "payload": {"n": n, **payload}}
                    for n in range(first, first + batch)
                ]
            )
        queued = await _used(client)
        queued_sizes = await _sizes(client, hook["id"])
        await client.update_webhook(hook["id"], paused=True)
        cfg = DeliveryConfig()
        sender = Sender(
            timeout_s=cfg.timeout_s,
            concurrency=cfg.concurrency,
            policy=AddressPolicy(allow_private=True, allowed_cidrs=()),
            user_agent="bench",
        )
        await sender.start()
        worker = Worker(client.store, sender, cfg, JobsConfig(), Metrics())
        task = asyncio.create_task(worker.run(drain_grace_s=1))
        deadline = time.monotonic() + 300
        while (await client.status())["paused_jobs"] < jobs:
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not hold every job within 300 s")
            await asyncio.sleep(0.2)
        worker.stop.set()
        await task
        await sender.close()
        # the worker's connections are the client's: closing them frees their buffers, which
        # would otherwise count as held jobs
        await client.store.redis.connection_pool.disconnect()
        held = await _used(client)
        held_sizes = await _sizes(client, hook["id"])
        # what the held jobs' keys free when deleted (no estimate: the allocator's own count)
        store = client.store.of_webhook(hook["id"])
        keys = store.keys
        before_del = await _used(client)
        await store.redis.delete(
            keys.jobs, keys.held(hook["id"]), keys.ready(f"{hook['id']}|default")
        )
        freed = before_del - await _used(client)
    print(f"{jobs} jobs, payload {payload_bytes} bytes")
    print(
        f"used_memory per job: queued {(queued - start) / jobs:.0f} B, "
        f"held {(held - start) / jobs:.0f} B"
    )
    print(f"freed by deleting the held jobs' keys: {freed / jobs:.0f} B per job")
    for name, when in (("queued", queued_sizes), ("held", held_sizes)):
        parts = ", ".join(f"{k} {v / jobs:.0f}" for k, v in when.items())
        print(f"MEMORY USAGE per job, {name}: {parts} (total {sum(when.values()) / jobs:.0f} B)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--payload-bytes", type=int, default=200)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    with redis_at(args.redis_url) as url:
        asyncio.run(measure(url, args.jobs, args.payload_bytes))


if __name__ == "__main__":
    main()
