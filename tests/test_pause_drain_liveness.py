"""A resumed webhook's drain mark always goes (pauses.py, lua/pause_release.lua): whatever
happens to the webhook or its streams meanwhile, and leaving no key behind."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from dispatcher.queue import delays, pauses, streams
from tests.test_pause_drain import _claim_all, _drained, _hold, _publish

if TYPE_CHECKING:
    from dispatcher import Client, shapes
    from dispatcher.queue.store import Store


async def _resumed_with_held(client: Client, n: int) -> tuple[shapes.WebhookWithSecret, Store]:
    """A webhook resumed with ``n`` jobs held in the compact form, none put back yet."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    await client.update_webhook(hook["id"], paused=True)
    store = client.store.of_webhook(hook["id"])
    await _publish(client, 0, n)
    claims = await _claim_all(store, n)
    assert await streams.settle(store, "w1", [_hold(c) for c in claims]) == []
    await client.update_webhook(hook["id"], paused=False)
    return hook, store


async def _ticks(store: Store, n: int) -> None:
    for _ in range(n):
        await pauses.tick(store)


async def test_a_drained_webhook_leaves_no_held_stream_or_resume_key(client: Client) -> None:
    """Once its backlog is back and claimed, a resumed webhook keeps no held stream, no
    resumed hash and no holders entry in Redis."""
    hook, store = await _resumed_with_held(client, 5)
    await _ticks(store, 1)
    claims, _ = await streams.claim_new(store, ("default",), "w2", budget=10)
    assert len(claims) == 5
    await _ticks(store, 3)
    assert await _drained(client, hook["id"])
    keys = store.keys
    assert await store.redis.exists(keys.ready(f"{hook['id']}|default")) == 0
    assert await store.redis.exists(keys.base + "resumed:" + hook["id"]) == 0
    assert await store.redis.smembers(keys.holders) == set()
    assert await store.redis.smembers(keys.held_streams) == set()


async def test_the_mark_goes_when_the_stream_put_back_in_is_deleted(client: Client) -> None:
    """The ready stream the backlog went back to, deleted before its jobs were claimed, does
    not keep the webhook draining."""
    hook, store = await _resumed_with_held(client, 3)
    await _ticks(store, 1)
    await store.redis.delete(store.keys.ready("default"))
    await _ticks(store, 3)
    assert await _drained(client, hook["id"])


async def test_the_mark_goes_when_the_webhook_is_deleted_mid_drain(client: Client) -> None:
    """A webhook deleted while its backlog is back but unclaimed leaves no resumed hash and
    no holders entry behind."""
    hook, store = await _resumed_with_held(client, 3)
    await _ticks(store, 1)
    await client.delete_webhook(hook["id"])
    await _ticks(store, 3)
    keys = store.keys
    assert await store.redis.exists(keys.base + "resumed:" + hook["id"]) == 0
    assert await store.redis.smembers(keys.holders) == set()


async def test_another_consumer_group_on_the_stream_does_not_keep_the_webhook_draining(
    client: Client,
) -> None:
    """A consumer group of someone else's on the ready stream (one that never reads it) does
    not keep a resumed webhook draining once dispatcher's group claimed past its backlog."""
    hook, store = await _resumed_with_held(client, 3)
    await store.redis.xgroup_create(store.keys.ready("default"), "audit", id="0")
    await _ticks(store, 1)
    claims, _ = await streams.claim_new(store, ("default",), "w2", budget=10)
    assert len(claims) == 3
    await _ticks(store, 3)
    assert await _drained(client, hook["id"])


async def test_a_mark_left_with_nothing_held_goes_with_the_next_job(client: Client) -> None:
    """A webhook left draining with nothing held (its resume's own release call never ran)
    stops draining once its next job, held by its gate, is put back and claimed."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    store = client.store.of_webhook(hook["id"])
    raw = cast("bytes | None", await store.redis.hget(store.keys.webhooks, hook["id"]))
    assert raw is not None
    assert raw.endswith(b"}")
    await store.redis.hset(store.keys.webhooks, hook["id"], raw[:-1] + b',"draining":1}')
    await _ticks(store, 2)  # nothing held: no tick looks at it
    assert not await _drained(client, hook["id"])
    await _publish(client, 0, 1)
    [claim] = await _claim_all(store, 1)
    assert await streams.settle(store, "w1", [_hold(claim)]) == []  # as its gate holds it
    await _ticks(store, 1)
    claims, _ = await streams.claim_new(store, ("default",), "w2", budget=10)
    assert [c.job_id for c in claims] == [claim.job_id]
    await _ticks(store, 3)
    assert await _drained(client, hook["id"])


async def test_a_held_job_whose_entry_was_deleted_is_dead_lettered_under_its_webhook(
    client: Client,
) -> None:
    """A held job whose held-stream entry was deleted outside dispatcher is dead-lettered by
    the orphan sweep as entry_missing, still saying which webhook it was for."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    await client.update_webhook(hook["id"], paused=True)
    store = client.store.of_webhook(hook["id"])
    await _publish(client, 0, 1)
    [claim] = await _claim_all(store, 1)
    assert await streams.settle(store, "w1", [_hold(claim)]) == []
    await store.redis.xdel(store.keys.ready(f"{hook['id']}|default"), claim.sid)
    swept = await delays.find_orphans(store, cursor="0", count=100)
    assert swept.dead == [claim.job_id]
    job = await client.get_job(claim.job_id)
    assert job is not None
    assert (job["state"], job["webhook_id"]) == ("dead", hook["id"])


async def test_the_mark_goes_when_the_webhook_is_disabled_mid_drain(client: Client) -> None:
    """A webhook disabled while its put-back backlog is unclaimed stops draining once its
    jobs are claimed (to be dead-lettered), leaving no resumed hash."""
    hook, store = await _resumed_with_held(client, 3)
    await _ticks(store, 1)
    await client.update_webhook(hook["id"], enabled=False)
    claims, _ = await streams.claim_new(store, ("default",), "w2", budget=10)
    assert len(claims) == 3
    await _ticks(store, 3)
    assert await _drained(client, hook["id"])
    assert await store.redis.exists(store.keys.base + "resumed:" + hook["id"]) == 0


async def test_the_mark_goes_when_the_webhook_moves_to_another_queue_mid_drain(
    client: Client,
) -> None:
    """A webhook moved to another queue while its put-back backlog is unclaimed stops draining
    once the old queue's jobs are claimed; its held jobs went back to the old queue."""
    hook, store = await _resumed_with_held(client, 3)
    await _ticks(store, 1)
    await client.update_webhook(hook["id"], queue="other")
    await _ticks(store, 2)
    assert not await _drained(client, hook["id"])
    claims, _ = await streams.claim_new(store, ("default",), "w2", budget=10)
    assert len(claims) == 3
    await _ticks(store, 3)
    assert await _drained(client, hook["id"])
