"""Taking over the jobs of a worker that died, with a running worker, a real Redis and a real,
slow HTTP target (issue 14, findings 1 and 7)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

from dispatcher.queue.keys import GROUP, Keys
from tests.helpers import eventually, stream_entries
from tests.target import Reply

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from tests.conftest import WorkerHarness
    from tests.target import Target

SLOW_S = 1.0  # every answer takes this long
WEBHOOKS = 20  # the survivor's per-endpoint caps (2 each at first) let all its jobs in
HELD = 2 * WEBHOOKS  # jobs the dead worker had claimed
LANES = 4  # the survivor's: HELD / LANES x SLOW_S is far beyond the stall timeout
TIMEOUT_S = 1.5
STALL_S = 2.0


async def _pending(redis: aioredis.Redis, key: str) -> list[dict[str, Any]]:
    reply = redis.xpending_range(key, GROUP, "-", "+", 100_000)
    return await cast("Awaitable[list[dict[str, Any]]]", reply)


async def _jobs(client: Client, ids: list[str]) -> list[shapes.Job]:
    jobs = await asyncio.gather(*(client.get_job(i) for i in ids))
    return [job for job in jobs if job is not None]


async def _held_by_a_dead_worker(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target, n: int, *, hooks: int = 1
) -> list[str]:
    """``n`` jobs (``n / hooks`` events to ``hooks`` webhooks) for the slow target, claimed by a
    worker that then died, idle past the stall timeout."""
    for _ in range(hooks):
        await client.create_webhook("acme", target.url("/slow"))
    target.script("/slow", Reply(delay_s=SLOW_S))
    answer = await client.publish_many(
        [{"tenant_id": "acme", "event_type": "a.b", "payload": {"i": i}} for i in range(n // hooks)]
    )
    ids = []
    for event in answer:
        assert isinstance(event, dict), event
        ids += [job["id"] for job in event["jobs"]]
    ready = Keys(prefix).ready("default")
    await redis.xgroup_create(ready, GROUP, id="0")
    await redis.xreadgroup(GROUP, "dead", {ready: ">"}, count=n)
    sids = [p["message_id"] for p in await _pending(redis, ready)]
    assert len(sids) == n
    # as if it died a minute ago: no test waits for the stall timeout to pass
    await redis.xclaim(ready, GROUP, "dead", 0, sids, idle=60_000, justid=True)
    return ids


async def test_a_survivor_with_few_lanes_sends_each_reclaimed_job_once(
    client: Client,
    workers: WorkerHarness,
    target: Target,
    redis: aioredis.Redis,
    prefix: str,
) -> None:
    """Jobs of a dead worker taken over by a survivor with far fewer lanes than jobs, for an
    endpoint slow enough that they wait longer than the stall timeout, are each sent once and
    delivered; none is taken again or dead-lettered as poison."""
    ids = await _held_by_a_dead_worker(client, redis, prefix, target, HELD, hooks=WEBHOOKS)
    await workers.start(concurrency=LANES, timeout_s=TIMEOUT_S, stall_timeout_s=STALL_S)

    async def delivered() -> bool:
        return {j["state"] for j in await _jobs(client, ids)} == {"delivered"}

    async def settled() -> bool:
        return not await _pending(redis, Keys(prefix).ready("default"))

    await eventually(delivered, timeout_s=60, what=f"{HELD} jobs delivered")
    await eventually(settled, what="no entry pending")
    sends = Counter(r.headers.get("webhook-id") for r in target.received)
    assert {j: n for j, n in sends.items() if n != 1} == {}
    assert set(sends) == set(ids)
    jobs = await _jobs(client, ids)
    assert {j["stalls"] for j in jobs} == {1}  # one takeover each, from the dead worker
    assert await stream_entries(redis, Keys(prefix).dlq) == []
    assert workers.metrics.get("dispatcher_reclaimed_total") == HELD
    assert workers.metrics.get("dispatcher_stale_owner_rejected_total") == 0


async def test_a_paused_queue_keeps_its_stalled_jobs_until_resumed(
    client: Client,
    workers: WorkerHarness,
    target: Target,
    redis: aioredis.Redis,
    prefix: str,
) -> None:
    """A dead worker's jobs of a paused queue, idle past the stall timeout, are neither taken
    over nor sent while it is paused, and cost no stall; after resume they are each sent once."""
    ids = await _held_by_a_dead_worker(client, redis, prefix, target, 3)
    ready = Keys(prefix).ready("default")
    worker = await workers.start(timeout_s=TIMEOUT_S, stall_timeout_s=STALL_S)
    await client.pause("default")
    # The pause is honoured at once, not from the worker's next read of the paused queues.
    assert await worker.reclaim("default") == 0
    assert {p["consumer"] for p in await _pending(redis, ready)} == {b"dead"}
    assert target.count() == 0
    assert {j["stalls"] for j in await _jobs(client, ids)} == {0}

    await client.resume("default")
    await target.wait_for(3, "/slow", timeout_s=20)

    async def delivered() -> bool:
        return {j["state"] for j in await _jobs(client, ids)} == {"delivered"}

    await eventually(delivered, timeout_s=20, what="3 jobs delivered")
    assert sorted(r.headers.get("webhook-id", "") for r in target.received) == sorted(ids)
    assert {j["stalls"] for j in await _jobs(client, ids)} == {1}


async def test_a_busy_survivor_takes_over_stalled_jobs_before_new_ones(
    client: Client,
    workers: WorkerHarness,
    target: Target,
    redis: aioredis.Redis,
    prefix: str,
) -> None:
    """A survivor whose lanes are always busy with a backlog of new jobs still takes over a
    dead worker's jobs at its next free lanes, rather than after the whole backlog."""
    stalled = await _held_by_a_dead_worker(client, redis, prefix, target, 4)
    answer = await client.publish_many(
        [{"tenant_id": "acme", "event_type": "a.b", "payload": {"i": i}} for i in range(30)]
    )
    backlog = [job["id"] for event in answer if isinstance(event, dict) for job in event["jobs"]]
    await workers.start(concurrency=2, timeout_s=TIMEOUT_S, stall_timeout_s=STALL_S)

    async def delivered() -> bool:
        return {j["state"] for j in await _jobs(client, stalled)} == {"delivered"}

    await eventually(delivered, timeout_s=30, what="the stalled jobs delivered")
    waiting = [j for j in await _jobs(client, backlog) if j["state"] != "delivered"]
    assert len(waiting) >= 10, f"the stalled jobs waited for the backlog ({len(waiting)} left)"
