"""Pause tick cost: the Redis time of one release call (``pauses.tick``, the once-a-second
tick of every worker process) with many paused webhooks, each holding a job.

    python -m bench.pause_tick                    # a fresh redis-server, 2,000 paused webhooks
    python -m bench.pause_tick --webhooks 5000 --calls 50

``--webhooks`` webhooks are created and paused, one event is published to them all, and its
jobs are claimed and held (as a worker's gate holds them). Then ``--calls`` tick calls run
with none resumed, and one call right after one of them is resumed. Printed per call:
Redis's own time in the script (``INFO commandstats``: the ``evalsha`` usec) and the webhook
records it read (``hget`` calls).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import TYPE_CHECKING

from dispatcher import Client
from dispatcher.queue import codec, pauses, streams
from dispatcher.queue.streams import SettleKind, Settlement
from tests.helpers import redis_at

if TYPE_CHECKING:
    from dispatcher.queue.store import Store


async def _stats(store: Store) -> tuple[int, int]:
    """Redis's evalsha usec and hget calls so far."""
    info = await store.redis.info("commandstats")
    return (
        int(info.get("cmdstat_evalsha", {}).get("usec", 0)),
        int(info.get("cmdstat_hget", {}).get("calls", 0)),
    )


async def _ticks(store: Store, calls: int) -> tuple[float, float]:
    """Per tick call: Redis's usec in the script, and the hget calls it made."""
    usec, hgets = await _stats(store)
    for _ in range(calls):
        await pauses.tick(store)
    after_usec, after_hgets = await _stats(store)
    return (after_usec - usec) / calls, (after_hgets - hgets) / calls


async def measure(redis_url: str, webhooks: int, calls: int) -> None:
    prefix = f"pausetick{uuid.uuid4().hex[:6]}"
    async with Client.from_url(redis_url, prefix=prefix) as client:
        hooks = [
            await client.create_webhook("acme", f"http://127.0.0.1:9/{n}") for n in range(webhooks)
        ]
        for hook in hooks:
            await client.update_webhook(hook["id"], paused=True)
        await client.publish("acme", "e", {"n": 1})
        store = client.store.of_webhook(hooks[0]["id"])
        await streams.ensure_group(store, "default")
        claims, _ = await streams.claim_new(store, ("default",), "bench", budget=2 * webhooks)
        held = []
        for claim in claims:
            if claim.inline is None:
                raise SystemExit(f"job {claim.job_id} has no inline form")
            claim.inline.hold()
            record = codec.encode(claim.inline)
            held.append(
                Settlement(claim, SettleKind.HELD, record, 1, "", b"", parked_for=claim.webhook_id)
            )
        for first in range(0, len(held), 500):  # a settle call's arguments stay few
            await streams.settle(store, "bench", held[first : first + 500])
        jobs = (await pauses.held(store)).jobs
        await _ticks(store, 1)  # the scripts loaded
        idle_usec, idle_hgets = await _ticks(store, calls)
        await client.update_webhook(hooks[0]["id"], paused=False)
        resumed_usec, resumed_hgets = await _ticks(store, 1)
        left = (await pauses.held(store)).jobs
    print(f"{webhooks} paused webhooks, {jobs} held jobs")
    print(f"tick call, none resumed: {idle_usec:.0f} us in Redis, {idle_hgets:.0f} HGETs")
    print(
        f"tick call after one resume: {resumed_usec:.0f} us in Redis, {resumed_hgets:.0f} HGETs"
        f" ({jobs - left} job put back)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=2_000)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    with redis_at(args.redis_url) as url:
        asyncio.run(measure(url, args.webhooks, args.calls))


if __name__ == "__main__":
    main()
