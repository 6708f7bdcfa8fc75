"""A FIFO lane never sticks: a head whose record is unreadable or gone releases its lane on
every path that drops or dead-letters it, and the jobs waiting behind heads are counted, against
a real Redis."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, cast

import orjson

from dispatcher.alerts import Alerts
from dispatcher.config import AlertsConfig
from dispatcher.metrics import Metrics
from dispatcher.model import JobState
from dispatcher.queue import backlog, breakers, codec, delays, ordering, pauses, streams, waiting
from dispatcher.queue.keys import Keys
from dispatcher.queue.streams import MalformedEntry, SettleKind, Settlement
from tests.helpers import eventually, settlement
from tests.test_fifo_lanes import lane_of_two, queued

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from dispatcher import Client
    from dispatcher.queue.store import Store
    from dispatcher.queue.streams import Claim
    from tests.conftest import WorkerHarness
    from tests.target import Target

GARBAGE = b"not a record"


async def _waiting(redis: aioredis.Redis, prefix: str) -> dict[bytes, bytes]:
    """The shard's count of jobs waiting behind lane heads, by webhook."""
    found = await redis.hgetall(Keys(prefix).lanes_waiting)
    return cast("dict[bytes, bytes]", found)


async def _moved_on(redis: aioredis.Redis, prefix: str, behind: str) -> None:
    """The lane "o" holds only ``behind`` now: its head, indexed, nothing counted behind it."""
    keys = Keys(prefix)
    assert await redis.hget(keys.lane_heads, behind) is not None
    assert await redis.zscore(keys.lane_since, behind) is not None
    assert await _waiting(redis, prefix) == {}


async def _claim_head(store: Store, head: str) -> Claim:
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    assert claim.job_id == head
    return claim


async def test_a_head_with_an_unreadable_record_quarantined_at_claim_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head whose record cannot be read when a worker loads it is dead-lettered as malformed
    (the gate's quarantine), and the job behind it is queued: a bad record never blocks a lane."""
    _, head, behind = await lane_of_two(client)
    claim = await _claim_head(store, head)
    await redis.hset(Keys(prefix).jobs, head, GARBAGE)
    await streams.quarantine(store, "default", "malformed", [MalformedEntry(claim.sid, b"{}")])
    assert await queued(redis, prefix) == [behind]
    await _moved_on(redis, prefix, behind)


async def test_a_head_with_an_unreadable_record_found_by_reclaim_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head whose record is gone when reclaim takes it over is dead-lettered as malformed,
    and the job behind it is queued."""
    _, head, behind = await lane_of_two(client)
    await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)  # "a" dies
    await redis.hdel(Keys(prefix).jobs, head)
    page = await streams.reclaim_page(store, "default", "b", min_idle_ms=0, cursor="0-0", count=10)
    assert page.malformed
    assert await queued(redis, prefix) == [behind]
    await _moved_on(redis, prefix, behind)


async def _retried_head(client: Client, store: Store) -> tuple[str, str, str]:
    """A lane of two whose head failed once and waits in the delayed zset, due now."""
    hook, head, behind = await lane_of_two(client)
    claim = await _claim_head(store, head)
    retry = await settlement(store, claim, "R", JobState.SCHEDULED, due_in_ms=0)
    await streams.settle(store, "a", [retry])
    return hook, head, behind


async def test_a_retried_head_whose_record_is_gone_releases_its_lane_when_due(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head waiting for its retry whose record is gone when it is due is dropped by the
    promoter, and the job behind it is queued."""
    _, head, behind = await _retried_head(client, store)
    await redis.hdel(Keys(prefix).jobs, head)
    assert (await delays.promote_due(store, "default")).orphans == [head]
    assert await queued(redis, prefix) == [behind]
    await _moved_on(redis, prefix, behind)


async def test_a_retried_head_whose_record_is_unreadable_releases_its_lane_when_due(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head waiting for its retry whose record cannot be read when it is due is dead-lettered
    as malformed by the promoter, and the job behind it is queued."""
    _, head, behind = await _retried_head(client, store)
    await redis.hset(Keys(prefix).jobs, head, GARBAGE)
    assert (await delays.promote_due(store, "default")).malformed == [head]
    assert await queued(redis, prefix) == [behind]
    await _moved_on(redis, prefix, behind)


async def _head_waiting_for_room(client: Client, store: Store) -> tuple[str, str, str, Claim]:
    """A lane of two (webhook with max_in_flight 1) whose head waits for room, and the claim of
    the head of a second lane of the same webhook."""
    hook, head, behind = await lane_of_two(client, max_in_flight=1)
    other = (await client.publish("acme", "a.b", {}, ordering_key="p"))["jobs"][0]["id"]
    claims, _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    [claim] = [c for c in claims if c.job_id == head]
    [other_claim] = [c for c in claims if c.job_id == other]
    wait = await settlement(store, claim, "R", JobState.SCHEDULED)
    wait = dataclasses.replace(wait, kind=SettleKind.WAITING, waiting_in=hook, late_attempt=b"")
    await streams.settle(store, "a", [wait])
    assert await waiting.count(store, hook) == 1
    return hook, head, behind, other_claim


async def test_a_head_waiting_for_room_whose_record_is_unreadable_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head waiting for room whose record cannot be read when an attempt's end frees room
    (settle's release of waiting jobs) is dead-lettered as malformed, and the job behind it is
    queued."""
    _, head, behind, other = await _head_waiting_for_room(client, store)
    await redis.hset(Keys(prefix).jobs, head, GARBAGE)
    done: Settlement = await settlement(store, other, "D", JobState.DELIVERED)
    await streams.settle(store, "a", [dataclasses.replace(done, frees=1)])
    assert await queued(redis, prefix) == [behind]
    await _moved_on(redis, prefix, behind)


async def test_a_head_waiting_for_room_whose_record_is_gone_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head waiting for room whose record is gone when the tick releases it is dropped, and
    the job behind it is queued."""
    _, head, behind, other = await _head_waiting_for_room(client, store)
    await redis.hdel(Keys(prefix).jobs, head)
    await waiting.tick(store)
    assert await queued(redis, prefix) == [other.job_id, behind]  # other: still claimed
    await _moved_on(redis, prefix, behind)


async def test_a_parked_head_whose_record_is_gone_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head parked behind its webhook's breaker whose record is gone when the breaker lets
    its jobs go is dropped, and the job behind it is queued."""
    hook, head, behind = await lane_of_two(client)
    claim = await _claim_head(store, head)
    await redis.hset(Keys(prefix).breakers, hook, b'{"s":"closed","b":0}')
    park = await settlement(store, claim, "R", JobState.SCHEDULED)
    park = dataclasses.replace(park, kind=SettleKind.PARKED, parked_for=hook, late_attempt=b"")
    await streams.settle(store, "a", [park])
    assert await redis.zrange(Keys(prefix).parked(hook), 0, -1) == [head.encode()]
    await redis.hdel(Keys(prefix).jobs, head)
    await breakers.tick(store, probe_timeout_s=30, disable_after_s=3600)
    assert await queued(redis, prefix) == [behind]
    await _moved_on(redis, prefix, behind)


async def test_a_held_head_whose_record_is_unreadable_releases_its_lane_on_resume(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head held while its webhook is paused whose record cannot be read when the webhook is
    resumed is dead-lettered as malformed, and the job behind it is queued."""
    hook, head, behind = await lane_of_two(client)
    await client.update_webhook(hook, paused=True)
    claim = await _claim_head(store, head)
    [job] = (await streams.load(store, [claim])).jobs
    assert job is not None
    job.hold()
    held = Settlement(claim, SettleKind.HELD, codec.encode(job), 1, "", b"", parked_for=hook)
    await streams.settle(store, "a", [held])
    await redis.hset(Keys(prefix).jobs, head, GARBAGE)
    await client.update_webhook(hook, paused=False)
    await pauses.resume(store, hook)
    assert await queued(redis, prefix) == [behind]
    await _moved_on(redis, prefix, behind)


async def test_jobs_behind_lane_heads_are_counted_in_status_alerts_and_metrics(
    client: Client, store: Store
) -> None:
    """The jobs waiting behind FIFO lanes' heads show in ``/v1/status`` (``ordering_jobs``,
    also in ``scheduled``), count towards the ``queued_max`` alert and are gauges; a head's
    outcome takes one off."""
    hook, head, _ = await lane_of_two(client)
    for n in range(3):
        await client.publish("acme", "a.b", {"n": n}, ordering_key="p")
    status = await client.status()
    assert (status["ordering_jobs"], status["scheduled"], status["queued"]) == (3, 3, 2)
    measured = await backlog.measure(client.store)
    assert (measured.queued, measured.ordering) == (2, 3)
    assert measured.oldest_head_ms is not None
    alerts = Alerts(AlertsConfig(queued_max=5))
    alerts.observe(measured)
    assert [(a["name"], a["value"]) for a in alerts.active()] == [("queued_max", 5)]
    metrics = Metrics()
    alerts.export(metrics)
    assert metrics.gauge("dispatcher_ordering_waiting_jobs") == 3
    assert metrics.gauge("dispatcher_ordering_oldest_head_age_seconds") is not None
    claims, _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    [claim] = [c for c in claims if c.job_id == head]
    await streams.settle(store, "a", [await settlement(store, claim, "D", JobState.DELIVERED)])
    assert (await ordering.waiting(client.store)).by_webhook == {hook: 2}


async def test_a_deleted_fifo_webhooks_lanes_drain_to_the_dlq(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """A FIFO webhook deleted with jobs waiting in its lanes strands none: each head is
    dead-lettered in turn, and the count of waiting jobs goes back to nothing."""
    hook = await client.create_webhook("acme", target.url(), ordering="fifo")
    ids = [
        (await client.publish("acme", "a.b", {"n": n}, ordering_key="o"))["jobs"][0]["id"]
        for n in range(3)
    ]
    assert await _waiting(redis, prefix) == {hook["id"].encode(): b"2"}
    await client.delete_webhook(hook["id"])
    await workers.start()

    async def all_dead() -> bool:
        jobs = [await client.get_job(job_id) for job_id in ids]
        return all(job is not None and job["state"] == "dead" for job in jobs)

    await eventually(all_dead, what="every job of the deleted webhook dead")
    assert await _waiting(redis, prefix) == {}
    assert await redis.exists(Keys(prefix).lane(hook["id"], "o"), Keys(prefix).lane_heads) == 0
    assert target.received == []


async def test_a_waiting_job_whose_record_names_no_queue_is_dead_lettered_not_dropped(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A job behind a head whose record reads but names no queue is dead-lettered as
    malformed when its turn comes, so its loss shows in the DLQ, and the lane goes on."""
    hook, head, behind = await lane_of_two(client)
    last = (await client.publish("acme", "a.b", {"n": 2}, ordering_key="o"))["jobs"][0]["id"]
    keys = Keys(prefix)
    raw = cast("bytes", await redis.hget(keys.jobs, behind))
    meta, _, rest = raw.partition(b"\n")
    await redis.hset(
        keys.jobs, behind, orjson.dumps({**orjson.loads(meta), "q": None}) + b"\n" + rest
    )
    claim = await _claim_head(store, head)
    await streams.settle(store, "a", [await settlement(store, claim, "D", JobState.DELIVERED)])
    assert await queued(redis, prefix) == [last]
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(keys.dlq))
    assert [(f[b"r"], orjson.loads(f[b"raw"])["j"]) for _, f in entries] == [(b"malformed", behind)]
    assert await _waiting(redis, prefix) == {}
    assert await redis.hgetall(keys.lane_heads) == {last.encode(): keys.lane(hook, "o").encode()}
