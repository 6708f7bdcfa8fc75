"""Idempotency keys with sharded queues: one event id per key, whichever shard failed, and
a key given to one webhook's delivery is that webhook's alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from dispatcher.errors import DispatcherError
from dispatcher.ids import event_id_of
from dispatcher.queue.keys import Keys, shard_of
from tests.helpers import hooks_in_every_shard

if TYPE_CHECKING:
    from redis import asyncio as aioredis

    from dispatcher import Client, shapes
    from tests.conftest import WorkerHarness
    from tests.target import Target

SHARDS = 3


async def _assert_one_event(client: Client, answer: shapes.PublishAnswer, hooks: list[Any]) -> None:
    """Every webhook has one job, and every job (as stored) belongs to the answer's event."""
    assert sorted(j["webhook_id"] for j in answer["jobs"]) == sorted(h["id"] for h in hooks)
    for job in answer["jobs"]:
        assert event_id_of(job["id"]) == answer["event_id"]
        stored = await client.get_job(job["id"])
        assert stored is not None
        assert stored["event_id"] == answer["event_id"]


async def test_a_retry_after_a_failed_shard_keeps_the_first_event_id(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """After one shard fails a publish, its retry with the same key answers one event whose
    jobs, in every shard, all carry that event's id."""
    await client.store.adopt_layout(SHARDS)
    hooks = await hooks_in_every_shard(client, target, SHARDS)
    broken = Keys(prefix, 2).jobs
    await redis.set(broken, "not a hash")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await client.publish("acme", "a.b", {"n": 1}, idempotency_key="once")
    await redis.delete(broken)
    answer = await client.publish("acme", "a.b", {"n": 1}, idempotency_key="once")
    await _assert_one_event(client, answer, hooks)
    again = await client.publish("acme", "a.b", {"n": 1}, idempotency_key="once")
    assert again == answer


async def test_publish_many_retry_after_a_failed_shard_keeps_the_first_event_id(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """The same holds for publish_many: a retried event is still one event across shards."""
    await client.store.adopt_layout(SHARDS)
    hooks = await hooks_in_every_shard(client, target, SHARDS)
    event = {"tenant_id": "acme", "event_type": "a.b", "payload": {}, "idempotency_key": "k"}
    plain = {"tenant_id": "acme", "event_type": "a.b", "payload": {}}
    broken = Keys(prefix, 1).jobs
    await redis.set(broken, "not a hash")
    failed = await client.publish_many([event, plain])
    assert all(isinstance(r, DispatcherError) for r in failed)
    await redis.delete(broken)
    [answer, other] = await client.publish_many([event, plain])
    assert isinstance(answer, dict)
    assert isinstance(other, dict)
    await _assert_one_event(client, answer, hooks)
    await _assert_one_event(client, other, hooks)
    assert other["event_id"] != answer["event_id"]
    [again] = await client.publish_many([event])
    assert again == answer


async def test_a_delivery_key_belongs_to_its_webhook(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """The same idempotency key given to deliveries to two webhooks of one shard (and to a
    publish) makes a job for each: a key is scoped to the webhook it is delivered to."""
    first = await client.create_webhook("acme", target.url("/first"), ["x"])
    second = await client.create_webhook("acme", target.url("/second"), ["x"])
    assert shard_of(first["id"]) == shard_of(second["id"])
    new_1, one = await client.deliver(first["id"], "a.b", {"n": 1}, idempotency_key="k")
    new_2, two = await client.deliver(second["id"], "a.b", {"n": 2}, idempotency_key="k")
    assert (new_1, new_2) == (True, True)
    assert [j["webhook_id"] for j in one["jobs"]] == [first["id"]]
    assert [j["webhook_id"] for j in two["jobs"]] == [second["id"]]
    repeat, again = await client.deliver(second["id"], "a.b", {"n": 2}, idempotency_key="k")
    assert (repeat, again) == (False, two)
    published = await client.publish("acme", "x", {"n": 3}, idempotency_key="k")
    assert sorted(j["webhook_id"] for j in published["jobs"]) == sorted([first["id"], second["id"]])
    await workers.start()
    await target.wait_for(2, "/first")
    await target.wait_for(2, "/second")
