"""The pause tick's cost: what each worker's once-a-second release call reads does not grow
with the webhooks that stay paused (pauses.py, pause_release.lua)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import pytest

from dispatcher.queue import pauses, streams
from tests.test_pauses import _held

if TYPE_CHECKING:
    from dispatcher import Client
    from dispatcher.queue.store import Store

PAUSED = 500


async def _hget_calls(store: Store) -> int:
    """How many HGETs Redis ran so far (scripts' calls included)."""
    stats = await store.redis.info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


async def _paused_holding_one_job(client: Client, n: int) -> tuple[Store, list[str]]:
    """n paused webhooks of one shard, each holding one job (as a worker's gate holds it)."""
    hooks = [await client.create_webhook("acme", f"https://h.example.com/{i}") for i in range(n)]
    store = client.store.of_webhook(hooks[0]["id"])
    assert all(client.store.of_webhook(h["id"]) is store for h in hooks)
    for hook in hooks:
        await client.update_webhook(hook["id"], paused=True)
    await client.publish("acme", "order.created", {"n": 1})
    await streams.ensure_group(store, "default")
    claims, _ = await streams.claim_new(store, ("default",), "w1", budget=2 * n)
    assert len(claims) == n
    assert await streams.settle(store, "w1", [_held(c) for c in claims]) == []
    assert (await pauses.held(store)).jobs == n
    return store, [h["id"] for h in hooks]


async def test_a_tick_reads_the_resumed_webhook_not_every_paused_one(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 500 paused webhooks holding a job each and one resumed, a tick puts back the
    resumed one's job and reads a few webhook records, not all 500."""
    monkeypatch.setattr(pauses, "SCAN_BATCH", 10, raising=False)
    store, hooks = await _paused_holding_one_job(client, PAUSED)
    resumed = hooks[0]
    await client.update_webhook(resumed, paused=False)

    before = await _hget_calls(store)
    released = await pauses.tick(store)
    reads = await _hget_calls(store) - before

    assert released == [(resumed, 1)]
    assert reads < PAUSED // 5, f"a tick read {reads} records for one resumed webhook"


async def test_a_webhook_resumed_without_its_release_is_found_by_the_safety_net(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook resumed but never named to the tick (its process died before, or a release
    before this one resumed it) still gets its held job back within (holders / SCAN_BATCH)
    ticks, while the others stay held."""
    monkeypatch.setattr(pauses, "SCAN_BATCH", 10, raising=False)
    store, hooks = await _paused_holding_one_job(client, 150)
    resumed = hooks[-1]
    raw = await store.redis.hget(store.keys.webhooks, resumed)
    assert raw is not None
    await store.redis.hset(
        store.keys.webhooks, resumed, orjson.dumps({**orjson.loads(raw), "paused": False})
    )
    released = []
    for _ in range(150 // 10 + 3):
        released += await pauses.tick(store)
    assert released == [(resumed, 1)]
    assert (await pauses.held(store)).by_webhook == dict.fromkeys(hooks[:-1], 1)


@pytest.mark.parametrize("change", ["delete", "resume"])
async def test_a_held_stream_of_a_queue_the_queues_set_misses_is_released_at_once(
    client: Client, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A webhook whose held stream is on a queue the shard's queues set does not list (written
    by an older release), among 150 paused holders: deleted, or moved to another queue and
    resumed, its held job is back within two ticks, and a resume keeps it draining till then."""
    monkeypatch.setattr(pauses, "SCAN_BATCH", 10)
    store, _ = await _paused_holding_one_job(client, 150)
    w = (await client.create_webhook("acme2", "https://h.example.com/w", queue="old"))["id"]
    assert client.store.of_webhook(w) is store
    await client.update_webhook(w, paused=True)
    await client.publish("acme2", "e", {"n": 1})
    await streams.ensure_group(store, "old")
    claims, _ = await streams.claim_new(store, ("old",), "w1", budget=5)
    assert await streams.settle(store, "w1", [_held(c) for c in claims]) == []
    await store.redis.srem(store.keys.queues, "old")  # as an older release left it
    if change == "delete":
        await client.delete_webhook(w)
    else:
        await client.update_webhook(w, queue="new")
        await client.update_webhook(w, paused=False)
        raw = await store.redis.hget(store.keys.webhooks, w)
        assert raw is not None
        assert b'"draining"' in raw
    ticks = 0
    while w in (await pauses.held(store)).by_webhook and ticks < 40:
        await pauses.drain(store)
        ticks += 1
    assert ticks <= 2, f"released after {ticks} ticks"
