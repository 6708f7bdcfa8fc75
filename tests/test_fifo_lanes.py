"""A FIFO lane's transitions, driven through the queue verbs against a real Redis: only the
head is ever queued, and only a current claim's delivered or dead outcome moves the lane on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dispatcher.ids import shard_of
from dispatcher.model import JobState
from dispatcher.queue import delays, ordering, streams
from dispatcher.queue.keys import Keys
from tests.helpers import settlement, stream_entries

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from dispatcher import Client
    from dispatcher.queue.store import Store


async def lane_of_two(client: Client, max_in_flight: int | None = None) -> tuple[str, str, str]:
    """A FIFO webhook with two jobs in its lane "o": its id, the head's, the next one's."""
    limit: dict[str, Any] = {} if max_in_flight is None else {"max_in_flight": max_in_flight}
    hook = await client.create_webhook(
        "acme", "https://hooks.example.com/x", ordering="fifo", **limit
    )
    ids = [
        (await client.publish("acme", "a.b", {"n": n}, ordering_key="o"))["jobs"][0]["id"]
        for n in range(2)
    ]
    return hook["id"], ids[0], ids[1]


async def queued(redis: aioredis.Redis, prefix: str) -> list[str]:
    """The job ids in the default queue's ready stream."""
    entries = await stream_entries(redis, Keys(prefix).ready("default"))
    return [fields[b"j"].decode() for _, fields in entries]


async def _lane(
    redis: aioredis.Redis, prefix: str, webhook_id: str, ordering_key: str | None = "o"
) -> list[str]:
    key = Keys(prefix).lane(webhook_id, ordering_key)
    return [i.decode() for i in await redis.lrange(key, 0, -1)]  # type: ignore[union-attr]


async def test_a_stale_outcome_never_moves_the_lane_on(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A frozen worker's late "delivered" leaves the lane to the worker that took over; that
    one's outcome queues the next job."""
    hook, head, behind = await lane_of_two(client)
    [claim_a], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    [claim_b] = (
        await streams.reclaim_page(store, "default", "b", min_idle_ms=0, cursor="0-0", count=10)
    ).claims
    late = await settlement(store, claim_a, "D", JobState.DELIVERED)
    assert await streams.settle(store, "a", [late]) == [head]
    assert await _lane(redis, prefix, hook) == [head, behind]
    assert await queued(redis, prefix) == [head]  # b's claim, still pending
    current = await settlement(store, claim_b, "D", JobState.DELIVERED)
    assert await streams.settle(store, "b", [current]) == []
    assert await _lane(redis, prefix, hook) == [behind]
    assert await queued(redis, prefix) == [behind]
    job = await client.get_job(behind)
    assert job is not None
    assert (job["state"], job["waiting_for"]) == ("queued", None)


async def test_a_retry_keeps_the_lane_blocked_and_a_dead_head_releases_it(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A retried head waits in the delayed zset with nothing of its lane queued; dead, it lets
    the next job go."""
    hook, head, behind = await lane_of_two(client)
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    await streams.settle(store, "a", [await settlement(store, claim, "R", JobState.SCHEDULED)])
    assert await queued(redis, prefix) == []
    assert await redis.zrange(Keys(prefix).delayed("default"), 0, -1) == [head.encode()]
    assert await _lane(redis, prefix, hook) == [head, behind]
    await redis.zadd(Keys(prefix).delayed("default"), {head: 0})
    assert (await delays.promote_due(store, "default")).moved == 1
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    assert claim.job_id == head
    await streams.settle(store, "a", [await settlement(store, claim, "X", JobState.DEAD)])
    assert await _lane(redis, prefix, hook) == [behind]
    assert await queued(redis, prefix) == [behind]


async def test_a_poison_head_releases_its_lane(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A head whose workers died on it three times is dead as poison, and the next job goes."""
    hook, head, behind = await lane_of_two(client)
    await streams.wait_new(store, ("default",), "w1", count=10, block_ms=10)  # w1 dies
    for consumer in ("w2", "w3", "w4"):
        page = await streams.reclaim_page(
            store, "default", consumer, min_idle_ms=0, cursor="0-0", count=10
        )
    assert page.poisoned == [head]
    assert await _lane(redis, prefix, hook) == [behind]
    assert await queued(redis, prefix) == [behind]


async def test_a_scheduled_lane_keeps_its_order_and_due_times(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """Scheduled events of a lane: only the head waits in the delayed zset; the next one goes
    there with its own due time when the head is done."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x", ordering="fifo")
    later = datetime.now(UTC) + timedelta(hours=1)
    answers = [
        await client.publish("acme", "a.b", {"n": n}, ordering_key="o", deliver_at=later)
        for n in range(2)
    ]
    ids = [answer["jobs"][0]["id"] for answer in answers]
    delayed = Keys(prefix).delayed("default")
    assert await redis.zrange(delayed, 0, -1) == [ids[0].encode()]
    job = await client.get_job(ids[1])
    assert job is not None
    assert (job["state"], job["waiting_for"]) == ("scheduled", "ordering")
    await redis.zadd(delayed, {ids[0]: 0})
    await delays.promote_due(store, "default")
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    await streams.settle(store, "a", [await settlement(store, claim, "D", JobState.DELIVERED)])
    assert await _lane(redis, prefix, hook["id"]) == [ids[1]]
    assert await redis.zscore(delayed, ids[1]) == int(later.timestamp() * 1000)
    assert await queued(redis, prefix) == []


async def test_waiters_still_drain_after_ordering_is_switched_off(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """Jobs behind a head when the webhook is switched to ``ordering: "none"`` are queued in
    turn after it (and counted as waiting until then); switched back, new events wait behind
    them."""
    hook, head, behind = await lane_of_two(client)
    await client.update_webhook(hook, ordering="none")
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    assert claim.job_id == head
    await streams.settle(store, "a", [await settlement(store, claim, "D", JobState.DELIVERED)])
    assert await queued(redis, prefix) == [behind]
    assert (await ordering.waiting(store)).jobs == 0
    await client.update_webhook(hook, ordering="fifo")
    after = (await client.publish("acme", "a.b", {"n": 2}, ordering_key="o"))["jobs"][0]["id"]
    assert await queued(redis, prefix) == [behind]
    assert await _lane(redis, prefix, hook) == [behind, after]
    assert (await ordering.waiting(store)).by_webhook == {hook: 1}


async def test_publish_many_keeps_a_lanes_order_across_shards(client: Client) -> None:
    """With two shards, ``publish_many`` puts the events of one lane into it in the order
    given, also when the first has an idempotency key (its other shards' parts run second)."""
    await client.store.adopt_layout(2)
    fifo = None
    while fifo is None or shard_of(fifo["id"]) != 1:
        fifo = await client.create_webhook(
            "acme", "https://hooks.example.com/x", ["a.x", "a.y"], ordering="fifo"
        )
    other = None
    while other is None or shard_of(other["id"]) != 0:
        other = await client.create_webhook("acme", "https://hooks.example.com/y", ["a.x"])
    answers = await client.publish_many(
        [
            {
                "tenant_id": "acme",
                "event_type": "a.x",
                "payload": {"n": 0},
                "idempotency_key": "k0",
            },
            {"tenant_id": "acme", "event_type": "a.y", "payload": {"n": 1}},
        ]
    )
    expected = []
    for answer in answers:
        assert not isinstance(answer, Exception)
        expected += [job["id"] for job in answer["jobs"] if job["webhook_id"] == fifo["id"]]
    shard = client.store.of_webhook(fifo["id"])
    lane = await shard.redis.lrange(shard.keys.lane(fifo["id"]), 0, -1)
    assert [i.decode() if isinstance(i, bytes) else i for i in lane] == expected


async def test_publish_many_keeps_a_lanes_order_when_one_event_is_redone(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Events of one lane published together join it in the order given, even when the first
    one's script is redone after the batch (it also goes to a queue the publisher did not know
    yet)."""
    fifo = await client.create_webhook(
        "acme", "https://hooks.example.com/x", ["a.x", "a.y"], ordering="fifo"
    )
    await client.create_webhook("acme", "https://hooks.example.com/y", ["a.x"], queue="other")
    answers = await client.publish_many(
        [
            {"tenant_id": "acme", "event_type": "a.x", "payload": {"n": 0}},
            {"tenant_id": "acme", "event_type": "a.y", "payload": {"n": 1}},
        ]
    )
    expected = []
    for answer in answers:
        assert not isinstance(answer, Exception)
        expected += [job["id"] for job in answer["jobs"] if job["webhook_id"] == fifo["id"]]
    assert await _lane(redis, prefix, fifo["id"], None) == expected


async def test_publish_many_keeps_a_lanes_order_when_the_script_is_reloaded(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """After SCRIPT FLUSH (or a Redis restart) a batch's events are redone one by one, and the
    events of one lane still join it in the order given."""
    fifo = await client.create_webhook("acme", "https://hooks.example.com/x", ordering="fifo")
    await redis.script_flush()
    answers = await client.publish_many(
        [{"tenant_id": "acme", "event_type": "a.b", "payload": {"n": n}} for n in range(5)]
    )
    expected = [a["jobs"][0]["id"] for a in answers if not isinstance(a, Exception)]
    assert len(expected) == 5
    assert await _lane(redis, prefix, fifo["id"], None) == expected
