"""Queues split into shards (``redis.shards``) on one Redis: every shard is its own hash tag,
so these tests see the same behaviour a Redis Cluster spreads over nodes (test_cluster.py runs
it there). A webhook lives in one shard, named in its id; its jobs follow it."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from dispatcher.config import load
from dispatcher.errors import ConfigError
from dispatcher.ids import is_job_id, is_webhook_id
from dispatcher.queue.keys import Keys, shard_of, shard_tag
from dispatcher.queue.store import Store
from tests.helpers import (
    Daemon,
    daemon_env,
    eventually,
    hooks_in_every_shard,
    log_events,
    stop_daemons,
)
from tests.target import Hang, Reply

if TYPE_CHECKING:
    from pathlib import Path

    from redis import asyncio as aioredis

    from dispatcher import Client, shapes
    from tests.conftest import WorkerHarness
    from tests.target import Target

SHARDS = 3


async def _sharded(client: Client, shards: int = SHARDS) -> None:
    """Record the layout as ``dispatcher run`` with ``redis.shards`` does."""
    await client.store.adopt_layout(shards)


async def _state(client: Client, job_id: str, state: str) -> shapes.Job | None:
    job = await client.get_job(job_id)
    return job if job is not None and job["state"] == state else None


def test_shard_tags_and_ids_are_a_stable_format() -> None:
    """Tags and ids are stored data: these exact values must never change."""
    assert [shard_tag(k) for k in range(4)] == ["0", "1-10", "2-14", "3-42"]
    assert Keys("p", 2).jobs == "p:{2-14}:jobs"
    assert Keys("p").jobs == "p:{0}:jobs"  # shard 0 keeps the layout of one shard
    core = "0123456789abcdefghij"
    assert [shard_of(i) for i in (f"wh_{core}", f"wh_{core}.7")] == [0, 7]
    assert [shard_of(i) for i in (f"job_{core}.3", f"job_{core}.2.3")] == [0, 2]
    assert is_webhook_id(f"wh_{core}.12")
    assert is_job_id(f"job_{core}.12.1")
    for bad in (f"wh_{core}.0", f"wh_{core}.", f"job_{core}.0.1", f"wh_{core}.12345"):
        assert not is_webhook_id(bad)
        assert not is_job_id(bad)


def test_redis_shards_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text("[redis]\nshards = 3\n")
    assert load(path, {}).redis.shards == SHARDS
    for bad, why in (("0", "redis.shards"), ("2000", "redis.shards"), ('"x"', "redis.shards")):
        path.write_text(f"[redis]\nshards = {bad}\n")
        with pytest.raises(ConfigError, match=why):
            load(path, {})


async def test_an_event_fans_out_over_every_shard_and_each_job_is_delivered(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """Webhooks spread over the shards; one event reaches every one of them, each delivery
    signed with its webhook's secret, and each job is found by its id alone."""
    await _sharded(client)
    hooks = await hooks_in_every_shard(client, target, SHARDS)
    for hook in hooks:
        assert await redis.hexists(Keys(prefix, shard_of(hook["id"])).webhooks, hook["id"])
    listed = await client.list_webhooks("acme")
    assert [h["id"] for h in listed["items"]] == sorted(h["id"] for h in hooks)

    answer = await client.publish("acme", "order.created", {"n": 1})
    jobs = answer["jobs"]
    assert sorted(j["webhook_id"] for j in jobs) == sorted(h["id"] for h in hooks)
    for job in jobs:  # a job lives in its webhook's shard, and its id says so
        assert shard_of(job["id"]) == shard_of(job["webhook_id"])
        assert job["id"].startswith(answer["event_id"].replace("evt_", "job_"))
    await workers.start()
    got = await target.wait_for(len(hooks), timeout_s=15)
    secrets = {h["id"]: h["secret"] for h in hooks}
    by_job = {j["id"]: j["webhook_id"] for j in jobs}
    for request in got:
        job_id = request.headers["webhook-id"]
        verifier = Verifier(secrets[by_job[job_id]])
        verifier.verify(request.body, dict(request.headers))
    for job in jobs:
        done = await eventually(lambda j=job["id"]: _state(client, j, "delivered"))
        assert done["webhook_id"] == job["webhook_id"]
    assert target.count() == len(hooks)


async def test_idempotency_holds_across_shards(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A repeated idempotency key answers the first answer, merged from every shard, and
    enqueues nothing anywhere."""
    await _sharded(client)
    hooks = await hooks_in_every_shard(client, target, SHARDS)
    first = await client.publish("acme", "a.b", {}, idempotency_key="k1")
    again = await client.publish("acme", "a.b", {}, idempotency_key="k1")
    assert again == first
    assert len(first["jobs"]) == len(hooks)
    await workers.start()
    await target.wait_for(len(hooks))
    await asyncio.sleep(0.3)
    assert target.count() == len(hooks)


async def test_a_shard_that_fails_a_publish_is_completed_by_its_retry(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """One shard refusing its part fails the publish after the others enqueued theirs; the
    retry with the same idempotency key enqueues only the missing part: every webhook gets
    the event exactly once."""
    await _sharded(client)
    hooks = await hooks_in_every_shard(client, target, SHARDS)
    broken = Keys(prefix, 2).jobs
    await redis.set(broken, "not a hash")  # shard 2's script fails on its first read
    with pytest.raises(Exception, match="WRONGTYPE"):
        await client.publish("acme", "a.b", {"n": 1}, idempotency_key="once")
    await redis.delete(broken)
    answer = await client.publish("acme", "a.b", {"n": 1}, idempotency_key="once")
    assert sorted(j["webhook_id"] for j in answer["jobs"]) == sorted(h["id"] for h in hooks)
    await workers.start()
    got = await target.wait_for(len(hooks))
    await asyncio.sleep(0.5)
    assert target.count() == len(hooks)
    assert len({r.headers["webhook-id"] for r in got}) == len(hooks)


async def test_direct_delivery_goes_to_the_webhooks_shard(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    await _sharded(client)
    hooks = await hooks_in_every_shard(client, target, SHARDS)
    chosen = next(h for h in hooks if shard_of(h["id"]) == SHARDS - 1)
    [job] = (await client.deliver(chosen["id"], "a.b", {"x": 1}))[1]["jobs"]
    assert shard_of(job["id"]) == SHARDS - 1
    await workers.start()
    [request] = await target.wait_for(1)
    assert request.headers["webhook-id"] == job["id"]


async def test_dlq_pages_merge_every_shard_in_order_then_replay_and_purge(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Dead jobs of every shard list in one order, each exactly once across pages; the DLQ
    size, a replay of everything and a purge count every shard."""
    await _sharded(client)
    target.script("/hook", Reply(500))
    hooks = await hooks_in_every_shard(client, target, SHARDS)
    for i in range(3):
        await client.publish("acme", "a.b", {"i": i})
    dead = 3 * len(hooks)
    await workers.start(max_attempts=1)
    await eventually(lambda: _dlq_size_is(client, dead), timeout_s=20, what="every job dead")

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await client.list_dlq(limit=7, cursor=cursor)
        seen += cast("list[dict[str, Any]]", page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert "." in cursor  # with several shards the cursor names one
    assert len(seen) == dead
    assert len({item["id"] for item in seen}) == dead
    order = [(tuple(int(p) for p in i["dlq_id"].split("-")), shard_of(i["id"])) for i in seen]
    assert order == sorted(order)
    assert {shard_of(item["id"]) for item in seen} == set(range(SHARDS))

    filtered = await client.list_dlq(limit=100, webhook_id=hooks[-1]["id"])
    assert len(filtered["items"]) == 3

    one = next(i for i in seen if shard_of(i["id"]) == 1)
    assert (await client.inspect_dlq(one["id"]))["id"] == one["id"]

    await workers.stop()
    assert (await client.replay_matching())["replayed"] == dead
    status = await client.status()
    assert status["dlq_size"] == 0
    assert status["queued"] == dead


async def _dlq_size_is(client: Client, n: int) -> bool:
    return bool((await client.status())["dlq_size"] == n)


async def test_status_and_breakers_count_every_shard(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Queued counts sum the shards; a failing webhook in a shard other than 0 trips its
    breaker, which the status shows."""
    await _sharded(client)
    hooks = await hooks_in_every_shard(client, target, SHARDS)
    await client.pause("default")
    await client.publish("acme", "a.b", {})
    status = await client.status()
    assert status["queued"] == len(hooks)
    assert status["redis"]["shards"] == SHARDS
    await client.resume("default")

    failing = next(h for h in hooks if shard_of(h["id"]) == 2)
    target.script("/bad", Reply(500))
    await client.update_webhook(failing["id"], url=target.url("/bad"))
    for i in range(12):
        await client.deliver(failing["id"], "a.b", {"i": i})
    await workers.start(max_attempts=1)
    tripped = await eventually(
        lambda: _tripped(client), timeout_s=15, what="the breaker of the failing webhook"
    )
    assert [b["webhook_id"] for b in tripped] == [failing["id"]]
    breaker = (await client.get_webhook(failing["id"]))["breaker"]
    assert breaker is not None
    assert breaker["state"] == "open"


async def _tripped(client: Client) -> list[shapes.TrippedBreaker]:
    return list((await client.status())["breakers"]["tripped"])


async def _webhook_in_shard(
    client: Client, tenant: str, url: str, shard: int
) -> shapes.WebhookWithSecret:
    """A webhook of ``tenant`` placed in ``shard`` (others made on the way are deleted)."""
    for _ in range(200):
        hook = await client.create_webhook(tenant, url)
        if shard_of(hook["id"]) == shard:
            return hook
        await client.delete_webhook(hook["id"])
    raise AssertionError(f"no webhook landed in shard {shard}")


async def test_a_backlog_in_one_shard_does_not_hold_back_another(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Workers serve the shards side by side: events for a webhook in another shard go out
    while a large backlog in one shard is still draining."""
    await _sharded(client)
    await _webhook_in_shard(client, "big", target.url("/big"), 1)
    await _webhook_in_shard(client, "small", target.url("/small"), 2)
    backlog = 1500
    for start in range(0, backlog, 500):
        answers = await client.publish_many(
            {"tenant_id": "big", "event_type": "a.b", "payload": {"i": i}}
            for i in range(start, start + 500)
        )
        assert all(isinstance(a, dict) for a in answers)
    for i in range(10):
        await client.publish("small", "a.b", {"i": i})
    await workers.start(concurrency=8)
    await target.wait_for(10, "/small", timeout_s=30)
    assert target.count("/big") < backlog / 3, "the small shard waited behind the backlog"
    await target.wait_for(backlog, "/big", timeout_s=60)


async def test_a_running_worker_serves_shards_added_later(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Raising redis.shards (another process starts with more) needs no restart of the
    others: they read the layout again and start serving the new shards."""
    worker = await workers.start(shards=1)
    await client.create_webhook("acme", target.url())
    await _sharded(client)  # a process with redis.shards = 3 started
    client.store.layout.read_at = float("-inf")
    hooks = await hooks_in_every_shard(client, target, SHARDS)
    answer = await client.publish("acme", "a.b", {})
    await target.wait_for(len(hooks) + 1, timeout_s=20)
    assert {shard.keys.shard for shard in worker.shards} == set(range(SHARDS))
    for job in answer["jobs"]:
        await eventually(lambda j=job["id"]: _state(client, j, "delivered"))


async def test_lowering_shards_keeps_serving_the_higher_ones(client: Client, prefix: str) -> None:
    """Fewer shards only stops placing new webhooks in the higher ones, which stay served."""
    await _sharded(client, 4)
    store = Store.open(_url(client), prefix=prefix)
    try:
        layout, before = await store.adopt_layout(2)
        assert (before, layout.shards, layout.served) == (4, 2, 4)
        assert len(await store.all_shards()) == 4
    finally:
        await store.close()


def _url(client: Client) -> str:
    kwargs = client.store.redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


@pytest.mark.slow
async def test_daemons_on_shards_reclaim_a_killed_daemons_job(
    redis_url: str, client: Client, prefix: str, target: Target, logs_dir: Path
) -> None:
    """`dispatcher run` with redis.shards = 3 records the layout and delivers to every shard;
    after one is SIGKILLed mid-delivery, another reclaims its job (in a shard other than 0)."""
    env = daemon_env(
        redis_url, prefix, redis_shards="3", delivery_timeout_s="2", delivery_stall_timeout_s="3"
    )
    first = Daemon(
        {**env, "DISPATCHER_DELIVERY_TIMEOUT_S": "60", "DISPATCHER_DELIVERY_STALL_TIMEOUT_S": "61"},
        logs_dir / "first.log",
    ).start()
    second: Daemon | None = None
    try:
        await eventually(lambda: log_events(first, "redis.connected"), what="first connected")
        [connected] = log_events(first, "redis.connected")
        assert (connected["shards"], connected["served_shards"]) == (SHARDS, SHARDS)
        client.store.layout.read_at = float("-inf")
        hooks = await hooks_in_every_shard(client, target, SHARDS, path="/fast")
        answer = await client.publish("acme", "a.b", {})
        await target.wait_for(len(hooks), "/fast", timeout_s=30)
        for job in answer["jobs"]:
            await eventually(lambda j=job["id"]: _state(client, j, "delivered"))

        slow = next(h for h in hooks if shard_of(h["id"]) == 2)
        await client.update_webhook(slow["id"], url=target.url("/slow"))
        target.script("/slow", Hang(), Reply(200))
        [stuck] = (await client.deliver(slow["id"], "a.b", {}))[1]["jobs"]
        await target.wait_for(1, "/slow", timeout_s=10)
        first.kill()
        assert await _state(client, stuck["id"], "active")
        second = Daemon(env, logs_dir / "second.log").start()
        job = await eventually(
            lambda: _state(client, stuck["id"], "delivered"), timeout_s=40, what="reclaimed"
        )
        assert [a["status"] for a in job["attempts"]][-1] == 200
        second.signal(signal.SIGTERM)
        assert second.wait() == 0
        assert orjson.loads(first.log.splitlines()[0])["event"]
    finally:
        await stop_daemons(first, second)
