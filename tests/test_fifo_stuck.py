"""A FIFO lane never sticks: a head whose record is unreadable or gone releases its lane on
every path that drops or dead-letters it, and the jobs waiting behind heads are counted, against
a real Redis."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from dispatcher.model import JobState
from dispatcher.queue import breakers, delays, streams, waiting
from dispatcher.queue.keys import Keys
from dispatcher.queue.streams import MalformedEntry, Settlement, SettleKind
from tests.helpers import settlement, stream_entries

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from dispatcher import Client
    from dispatcher.queue.store import Store
    from dispatcher.queue.streams import Claim

GARBAGE = b"not a record"


async def _lane_of_two(client: Client, **fields: object) -> tuple[str, str, str]:
    hook = await client.create_webhook(
        "acme", "https://hooks.example.com/x", ordering="fifo", **fields  # type: ignore[arg-type]
    )
    ids = [
        (await client.publish("acme", "a.b", {"n": n}, ordering_key="o"))["jobs"][0]["id"]
        for n in range(2)
    ]
    return hook["id"], ids[0], ids[1]


async def _queued(redis: aioredis.Redis, prefix: str) -> list[str]:
    entries = await stream_entries(redis, Keys(prefix).ready("default"))
    return [fields[b"j"].decode() for _, fields in entries]


async def _waiting(redis: aioredis.Redis, prefix: str) -> dict[bytes, bytes]:
    """The shard's count of jobs waiting behind lane heads, by webhook."""
    found: dict[bytes, bytes] = await redis.hgetall(Keys(prefix).lanes_waiting)  # type: ignore[misc]
    return found


async def _claim_head(store: Store, head: str) -> Claim:
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    assert claim.job_id == head
    return claim


async def test_a_head_with_an_unreadable_record_quarantined_at_claim_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head whose record cannot be read when a worker loads it is dead-lettered as malformed
    (the gate's quarantine), and the job behind it is queued: a bad record never blocks a lane."""
    _, head, behind = await _lane_of_two(client)
    claim = await _claim_head(store, head)
    await redis.hset(Keys(prefix).jobs, head, GARBAGE)
    await streams.quarantine(store, "default", "malformed", [MalformedEntry(claim.sid, b"{}")])
    assert await _queued(redis, prefix) == [behind]


async def test_a_head_with_an_unreadable_record_found_by_reclaim_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head whose record is gone when reclaim takes it over is dead-lettered as malformed,
    and the job behind it is queued."""
    _, head, behind = await _lane_of_two(client)
    await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)  # "a" dies
    await redis.hdel(Keys(prefix).jobs, head)
    page = await streams.reclaim_page(store, "default", "b", min_idle_ms=0, cursor="0-0", count=10)
    assert page.malformed
    assert await _queued(redis, prefix) == [behind]


async def _retried_head(client: Client, store: Store) -> tuple[str, str, str]:
    """A lane of two whose head failed once and waits in the delayed zset, due now."""
    hook, head, behind = await _lane_of_two(client)
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
    assert await _queued(redis, prefix) == [behind]


async def test_a_retried_head_whose_record_is_unreadable_releases_its_lane_when_due(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head waiting for its retry whose record cannot be read when it is due is dead-lettered
    as malformed by the promoter, and the job behind it is queued."""
    _, head, behind = await _retried_head(client, store)
    await redis.hset(Keys(prefix).jobs, head, GARBAGE)
    assert (await delays.promote_due(store, "default")).malformed == [head]
    assert await _queued(redis, prefix) == [behind]


async def _head_waiting_for_room(client: Client, store: Store) -> tuple[str, str, str, Claim]:
    """A lane of two (webhook with max_in_flight 1) whose head waits for room, and the claim of
    the head of a second lane of the same webhook."""
    hook, head, behind = await _lane_of_two(client, max_in_flight=1)
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
    assert await _queued(redis, prefix) == [behind]


async def test_a_head_waiting_for_room_whose_record_is_gone_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head waiting for room whose record is gone when the tick releases it is dropped, and
    the job behind it is queued."""
    _, head, behind, other = await _head_waiting_for_room(client, store)
    await redis.hdel(Keys(prefix).jobs, head)
    await waiting.tick(store)
    assert await _queued(redis, prefix) == [other.job_id, behind]  # other: still claimed


async def test_a_parked_head_whose_record_is_gone_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head parked behind its webhook's breaker whose record is gone when the breaker lets
    its jobs go is dropped, and the job behind it is queued."""
    hook, head, behind = await _lane_of_two(client)
    claim = await _claim_head(store, head)
    await redis.hset(Keys(prefix).breakers, hook, b'{"s":"closed","b":0}')
    park = await settlement(store, claim, "R", JobState.SCHEDULED)
    park = dataclasses.replace(park, kind=SettleKind.PARKED, parked_for=hook, late_attempt=b"")
    await streams.settle(store, "a", [park])
    assert await redis.zrange(Keys(prefix).parked(hook), 0, -1) == [head.encode()]
    await redis.hdel(Keys(prefix).jobs, head)
    await breakers.tick(store, probe_timeout_s=30, disable_after_s=3600)
    assert await _queued(redis, prefix) == [behind]
