"""Ordered delivery's throughput: one FIFO lane, many lanes, and the same backlog unordered.

    python -m bench.fifo [--n 20000] [--n-one 2000] [--lanes 1,64] [--concurrency 64]

Each variant gets a fresh redis-server (persistence off), the fast target (bench/target.py,
``/ok/``, no failures) and one webhook: ``ordering: "fifo"`` with events spread round-robin
over ``L`` ordering keys, or ``"none"`` for the reference. The backlog is published first
(``publish_many``), then one ``dispatcher run`` delivers it; printed: jobs/s and the daemon's
CPU seconds per 1,000 jobs, both from the first arrival to the last (so the daemon's start is
left out); one lane delivers ``--n-one`` jobs, the others ``--n``. A lane moves one round trip
at a time (claim, POST, settle, the next job queued), so one lane measures that round trip,
and many lanes what runs in parallel.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp

from bench.run import Redis, Target, cpu_seconds, stop_process
from bench.systems.common import payload
from dispatcher import Client

PREFIX = "bench"


def _daemon(redis_url: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(
        {
            "DISPATCHER_REDIS_URL": redis_url,
            "DISPATCHER_REDIS_PREFIX": PREFIX,
            "DISPATCHER_ADMIN_LISTEN": "",
            "DISPATCHER_SECURITY_ALLOW_PRIVATE_TARGETS": "true",
            "DISPATCHER_LOG_LEVEL": "warning",
            "DISPATCHER_DELIVERY_CONCURRENCY": str(concurrency),
        }
    )
    return subprocess.Popen([sys.executable, "-m", "dispatcher", "run"], env=env)


async def variant(n: int, lanes: int | None, concurrency: int) -> dict[str, Any]:
    """Deliver ``n`` jobs over ``lanes`` FIFO lanes (None: an unordered webhook)."""
    redis, target = Redis(), Target(0.0)
    try:
        async with Client.from_url(redis.url, prefix=PREFIX) as client:
            ordering = "none" if lanes is None else "fifo"
            await client.create_webhook("t0", f"{target.base}/ok/0", ordering=ordering)
            for start in range(0, n, 500):
                await client.publish_many(
                    {
                        "tenant_id": "t0",
                        "event_type": "bench.event",
                        "payload": payload(i, 300),
                        "ordering_key": None if lanes is None else f"k{i % lanes}",
                    }
                    for i in range(start, min(start + 500, n))
                )
        daemon = _daemon(redis.url, concurrency)
        async with aiohttp.ClientSession() as session:
            while (first := (await target.stats(session))["unique"]) < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            started, cpu_started = time.monotonic(), cpu_seconds(daemon.pid)  # started up
            while (await target.stats(session))["unique"] < n:  # noqa: ASYNC110 - a process
                await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(daemon.pid) - cpu_started
        stop_process(daemon)
    finally:
        target.stop()
        redis.stop()
    label = "none" if lanes is None else f"fifo, {lanes} lane{'s' * (lanes > 1)}"
    done = n - first
    return {
        "variant": label,
        "jobs": n,
        "jobs_per_s": done / elapsed,
        "cpu_per_1k": cpu * 1000 / done,
    }


async def main_async(args: argparse.Namespace) -> None:
    runs: list[int | None] = [int(x) for x in args.lanes.split(",")]
    runs.append(None)
    for lanes in runs:
        r = await variant(args.n_one if lanes == 1 else args.n, lanes, args.concurrency)
        print(
            f"{r['variant']:>16}: {r['jobs']} jobs, {r['jobs_per_s']:8.0f} jobs/s, "
            f"daemon CPU {r['cpu_per_1k']:.3f} s per 1,000 jobs",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--n-one", type=int, default=2000)
    parser.add_argument("--lanes", default="1,64")
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
