"""Deferral churn under a max_in_flight backlog (issue 14, finding 6), measured.

A webhook with ``max_in_flight=1`` and a backlog of ``--backlog`` jobs (its endpoint answers
in ``--latency`` s) shares one worker with another webhook. ``--settle`` s after the worker
starts (the backlog has been claimed once by then), the other webhook gets ``--others`` jobs;
over the next ``--window`` s it reports the useful requests, the deferrals and promotions the
backlog cost, and how long the other webhook's jobs took, against the same with no backlog.

    .venv/bin/python -m bench.churn --backlog 20000 --window 12
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from dispatcher import Client
from tests.conftest import WorkerHarness
from tests.helpers import RedisServer
from tests.target import Reply, Target


async def _publish(client: Client, tenant: str, n: int) -> None:
    for start in range(0, n, 500):
        events = [
            {"tenant_id": tenant, "event_type": "e.x", "payload": {"n": i}}
            for i in range(start, min(n, start + 500))
        ]
        await client.publish_many(events)


async def _others_s(client: Client, target: Target, n: int) -> float:
    """Seconds until ``n`` jobs of the "others" tenant are delivered."""
    begun = time.monotonic()
    await _publish(client, "others", n)
    await target.wait_for(n, "/others", timeout_s=600)
    return time.monotonic() - begun


async def _run(args: argparse.Namespace, url: str, prefix: str, backlog: int) -> dict[str, float]:
    async with Client.from_url(url, prefix=prefix) as client, Target() as target:
        target.script("/capped", Reply(delay_s=args.latency))
        await client.create_webhook("capped", target.url("/capped"), max_in_flight=1)
        await client.create_webhook("others", target.url("/others"))
        await _publish(client, "capped", backlog)
        harness = WorkerHarness(url, prefix)
        await harness.start(concurrency=args.concurrency, timeout_s=5, stall_timeout_s=10)
        try:
            await asyncio.sleep(args.settle)  # the backlog is claimed once, whatever happens
            before = _counts(harness, target)
            begun = time.monotonic()
            others_s = await _others_s(client, target, args.others)
            await asyncio.sleep(max(0.0, args.window - (time.monotonic() - begun)))
            after = _counts(harness, target)
            window = {k: after[k] - before[k] for k in after}
            return {
                **window,
                "peak": target.peak.get("/capped", 0),
                "others_s": round(others_s, 2),
                "total_deferred": after["deferred"],
            }
        finally:
            await harness.stop()


def _counts(harness: WorkerHarness, target: Target) -> dict[str, float]:
    m = harness.metrics
    return {
        "useful": target.count("/capped"),
        "deferred": sum(v for (n, _), v in m.counters.items() if n == "dispatcher_deferred_total"),
        "promoted": m.get("dispatcher_promoted_total"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--others", type=int, default=500)
    parser.add_argument("--window", type=float, default=12.0)
    parser.add_argument("--settle", type=float, default=5.0, help="s before the window opens")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    server = RedisServer(Path(tempfile.mkdtemp(prefix="churn-")))
    server.start()
    try:
        alone = await _run(args, server.url, "alone", 0)
        loaded = await _run(args, server.url, "loaded", args.backlog)
    finally:
        server.stop()
    print(f"no backlog:       {alone}")
    print(f"backlog {args.backlog}: {loaded}")
    print(f"others slowed {loaded['others_s'] / max(alone['others_s'], 1e-3):.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
