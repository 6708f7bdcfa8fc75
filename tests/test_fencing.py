"""The queue's claim rules, driven through the queue verbs against a real Redis.

Workers here are plain consumer names that read or reclaim and then settle (or never do),
standing in for processes that die or freeze at exactly the wrong moment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispatcher.model import JobState
from dispatcher.queue import delays, streams
from dispatcher.queue.keys import Keys
from tests.helpers import settlement, stream_entries

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from dispatcher import Client
    from dispatcher.queue.store import Store


async def _one_job(client: Client) -> str:
    await client.create_webhook("acme", "https://hooks.example.com/x")
    return str((await client.publish("acme", "a.b", {"n": 1}))["jobs"][0]["id"])


async def _reclaim(store: Store, consumer: str) -> streams.ReclaimPage:
    return await streams.reclaim_page(
        store, "default", consumer, min_idle_ms=0, cursor="0-0", count=10
    )


async def test_frozen_worker_cannot_overwrite_the_new_owner(client: Client, store: Store) -> None:
    """A worker whose claim was taken over has its late result refused; the state stays put."""
    job_id = await _one_job(client)
    [claim_a], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    page = await _reclaim(store, "b")  # a froze past the stall timeout; b takes over
    [claim_b] = page.claims
    assert claim_b.job_id == job_id
    assert claim_b.token != claim_a.token
    delivered = await settlement(store, claim_b, "D", JobState.DELIVERED)
    assert await streams.settle(store, "b", [delivered]) == []
    late_retry = await settlement(store, claim_a, "R", JobState.SCHEDULED)
    assert await streams.settle(store, "a", [late_retry]) == [job_id]
    job = await client.get_job(job_id)
    assert job is not None
    assert job["state"] == "delivered"
    assert job["attempts"][-1]["late"] is True
    assert await store.redis.zcard(store.keys.delayed("default")) == 0


async def test_same_consumer_reclaim_changes_the_token(client: Client, store: Store) -> None:
    """Even a reclaim by the same consumer name fences off the earlier claim of that entry."""
    job_id = await _one_job(client)
    [first], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    [again] = (await _reclaim(store, "a")).claims
    stale = await settlement(store, first, "D", JobState.DELIVERED)
    assert await streams.settle(store, "a", [stale]) == [job_id]
    current = await settlement(store, again, "D", JobState.DELIVERED)
    assert await streams.settle(store, "a", [current]) == []


async def test_stall_count_lives_in_the_record_and_poisons_at_three(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A job whose worker died on it three times goes to the DLQ as poison, even across retries."""
    job_id = await _one_job(client)
    [claim], _ = await streams.wait_new(store, ("default",), "w1", count=10, block_ms=10)
    # A retry re-adds the job as a new entry: Redis's delivery counter starts again from 1.
    retry = await settlement(store, claim, "R", JobState.SCHEDULED)
    assert await streams.settle(store, "w1", [retry]) == []
    await redis.zadd(Keys(prefix).delayed("default"), {job_id: 0})
    assert (await delays.promote_due(store, "default")).moved == 1
    await streams.wait_new(store, ("default",), "w2", count=10, block_ms=10)  # w2 dies
    assert [c.job_id for c in (await _reclaim(store, "w3")).claims] == [job_id]  # w3 dies
    assert [c.job_id for c in (await _reclaim(store, "w4")).claims] == [job_id]  # w4 dies
    page = await _reclaim(store, "w5")
    assert page.claims == []
    assert page.poisoned == [job_id]
    job = await client.get_job(job_id)
    assert job is not None
    assert job["state"] == "dead"
    assert job["dead_reason"] == "poison"
    assert job["stalls"] == 3
    assert "3 times" in (job["last_error"] or "")
    dlq = await stream_entries(redis, Keys(prefix).dlq)
    assert [(e[1][b"j"].decode(), e[1][b"r"]) for e in dlq] == [(job_id, b"poison")]
    assert (await redis.xpending(Keys(prefix).ready("default"), "dispatch"))["pending"] == 0


async def test_reclaim_loops_over_every_page(client: Client, store: Store) -> None:
    """The reclaimer follows the XAUTOCLAIM cursor, so it reaches every stalled entry."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    for i in range(25):
        await client.publish("acme", "a.b", {"i": i})
    claims, _ = await streams.wait_new(store, ("default",), "dead", count=100, block_ms=10)
    assert len(claims) == 25
    cursor, taken = "0-0", []
    while True:
        page = await streams.reclaim_page(
            store, "default", "alive", min_idle_ms=0, cursor=cursor, count=10
        )
        taken += page.claims
        cursor = page.cursor
        if cursor == "0-0":
            break
    assert sorted(c.job_id for c in taken) == sorted(c.job_id for c in claims)


async def test_pending_entry_deleted_under_us_is_reported(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """An entry deleted while pending is reported by reclaim, and its job is then found by the
    orphan sweep and dead-lettered as entry_missing, by id: never left queued forever."""
    job_id = await _one_job(client)
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    await redis.xdel(Keys(prefix).ready("default"), claim.sid)
    pending = await delays.find_orphans(store, cursor="0", count=1000)
    assert pending.dead == [], "a pending entry's job may still be in a worker's hands"
    page = await _reclaim(store, "b")
    assert page.missing == [claim.sid]
    found = await delays.find_orphans(store, cursor="0", count=1000)
    assert (found.cursor, found.dead, found.requeued) == ("0", [job_id], [])
    dlq = await stream_entries(redis, Keys(prefix).dlq)
    assert [(f[b"j"].decode(), f[b"r"]) for _, f in dlq] == [(job_id, b"entry_missing")]
    job = await client.get_job(job_id)
    assert job is not None
    assert (job["state"], job["dead_reason"]) == ("dead", "entry_missing")


async def test_queued_job_whose_entry_was_deleted_is_put_back(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A retried job (full record) whose entry is deleted before any worker claims it goes
    back into its stream with its payload."""
    job_id = await _one_job(client)
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    retry = await settlement(store, claim, "R", JobState.SCHEDULED)
    assert await streams.settle(store, "a", [retry]) == []
    await redis.zadd(Keys(prefix).delayed("default"), {job_id: 0})
    await delays.promote_due(store, "default")
    entries = await stream_entries(redis, Keys(prefix).ready("default"))
    await redis.xdel(Keys(prefix).ready("default"), entries[0][0])
    found = await delays.find_orphans(store, cursor="0", count=1000)
    assert found.requeued == [job_id]
    [again], _ = await streams.wait_new(store, ("default",), "c", count=10, block_ms=10)
    assert again.job_id == job_id
    [job] = (await streams.load(store, [again])).jobs
    assert job is not None
    assert job.payload == b'{"n":1}'


# --- issue 14, finding 1: reclaim takes what free lanes can start, never what a worker holds --


async def _idle(redis: aioredis.Redis, prefix: str, consumer: str, sids: list[Any]) -> None:
    """Make entries pending for ``consumer`` look idle for an hour, without a new delivery."""
    ready = Keys(prefix).ready("default")
    await redis.xclaim(ready, "dispatch", consumer, 0, sids, idle=3_600_000, justid=True)


async def _stalls(client: Client, job_id: str) -> int:
    job = await client.get_job(job_id)
    assert job is not None
    return int(job["stalls"])


async def test_claims_a_worker_holds_are_never_taken_over(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """Jobs that wait in a live worker's memory longer than the stall timeout are neither
    taken back by its own reclaim nor taken over by another worker's, and its claims stay
    current."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    for i in range(3):
        await client.publish("acme", "a.b", {"i": i})
    claims, _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    await _idle(redis, prefix, "a", [c.sid for c in claims])
    mine = await streams.reclaim_page(
        store, "default", "a", min_idle_ms=60_000, cursor="0-0", count=10, held=claims
    )
    assert (mine.claims, mine.poisoned) == ([], [])
    other = await streams.reclaim_page(
        store, "default", "b", min_idle_ms=60_000, cursor="0-0", count=10
    )
    assert other.claims == []
    assert [await _stalls(client, c.job_id) for c in claims] == [0, 0, 0]
    batch = [await settlement(store, c, "D", JobState.DELIVERED) for c in claims]
    assert await streams.settle(store, "a", batch) == []


async def test_a_reclaim_page_takes_no_more_than_asked(client: Client, store: Store) -> None:
    """A reclaim page takes at most the free lanes it is given; the rest stays with its dead
    worker, costs no stall, and the cursor leads to it."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    for i in range(10):
        await client.publish("acme", "a.b", {"i": i})
    claims, _ = await streams.wait_new(store, ("default",), "dead", count=100, block_ms=10)
    first = await streams.reclaim_page(
        store, "default", "alive", min_idle_ms=0, cursor="0-0", count=3
    )
    assert [c.sid for c in first.claims] == [c.sid for c in claims[:3]]
    assert [await _stalls(client, c.job_id) for c in claims[3:]] == [0] * 7
    second = await streams.reclaim_page(
        store, "default", "alive", min_idle_ms=0, cursor=first.cursor, count=3
    )
    assert [c.sid for c in second.claims] == [c.sid for c in claims[3:6]]
    none = await streams.reclaim_page(
        store, "default", "alive", min_idle_ms=0, cursor=second.cursor, count=0
    )
    assert (none.cursor, none.claims) == (second.cursor, [])


async def test_only_a_takeover_from_another_worker_is_a_stall(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A worker taking back an entry of its own that it lost track of costs the job no stall;
    another worker taking it over costs one."""
    job_id = await _one_job(client)
    [lost], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    await _idle(redis, prefix, "a", [lost.sid])
    [again] = (
        await streams.reclaim_page(
            store, "default", "a", min_idle_ms=60_000, cursor="0-0", count=10
        )
    ).claims
    assert (again.job_id, await _stalls(client, job_id)) == (job_id, 0)
    await _idle(redis, prefix, "a", [again.sid])
    [taken] = (
        await streams.reclaim_page(
            store, "default", "b", min_idle_ms=60_000, cursor="0-0", count=10
        )
    ).claims
    assert (taken.job_id, await _stalls(client, job_id)) == (job_id, 1)
