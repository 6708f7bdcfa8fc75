"""Single publishes sent together (publishing.Publisher) under faults: each caller still gets
its own answer or error, as one publish alone would."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from dispatcher import Client, IdempotencyKeyReused, InvalidField
from dispatcher.errors import RedisOutOfMemory
from tests.helpers import RedisServer, hooks_in_every_shard

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

    from tests.target import Target

URL = "http://127.0.0.1:9/hook"


async def test_one_key_twice_in_one_batch_is_enqueued_once(client: Client) -> None:
    """Two concurrent publishes with one key and one request: one is new, both get its answer."""
    await client.create_webhook("acme", URL)
    results = await asyncio.gather(
        *(client.publish_checked("acme", "a.b", {"n": 1}, idempotency_key="k") for _ in range(2))
    )
    assert sorted(new for new, _ in results) == [False, True]
    assert results[0][1] == results[1][1]
    assert results[0][1]["matched"] == 1


async def test_one_key_reused_in_a_batch_fails_only_its_caller(client: Client) -> None:
    """Of concurrent publishes, the one reusing a key with another request raises
    IdempotencyKeyReused; the first with that key and an unrelated event are accepted."""
    await client.create_webhook("acme", URL)
    results = await asyncio.gather(
        client.publish_checked("acme", "a.b", {"n": 1}, idempotency_key="k"),
        client.publish_checked("acme", "a.b", {"n": 2}, idempotency_key="k"),
        client.publish_checked("acme", "a.b", {"n": 3}),
        return_exceptions=True,
    )
    assert isinstance(results[1], IdempotencyKeyReused)
    assert isinstance(results[0], tuple)
    assert results[0][0]
    assert isinstance(results[2], tuple)
    assert results[2][0]


async def test_publishes_after_script_flush_are_accepted(
    client: Client, redis: aioredis.Redis
) -> None:
    """After SCRIPT FLUSH (or a Redis restart) concurrent publishes load the script again and
    each is accepted once."""
    await client.create_webhook("acme", URL)
    await client.publish("acme", "a.b", {})
    await redis.script_flush()
    answers = await asyncio.gather(*(client.publish("acme", "a.b", {"n": n}) for n in range(20)))
    ids = {answer["jobs"][0]["id"] for answer in answers}
    assert len(ids) == 20
    for job_id in ids:
        job = await client.get_job(job_id)
        assert job is not None
        assert job["state"] == "queued"


async def test_a_new_queue_in_a_batch_is_learnt_and_each_event_enqueued_once(
    client: Client,
) -> None:
    """Concurrent publishes to a webhook on a queue the client has not met each enqueue one job
    (none is lost or doubled while the queue is learnt)."""
    await client.create_webhook("acme", URL, queue="orders")
    answers = await asyncio.gather(*(client.publish("acme", "a.b", {"n": n}) for n in range(10)))
    assert [answer["matched"] for answer in answers] == [1] * 10
    for answer in answers:
        job = await client.get_job(answer["jobs"][0]["id"])
        assert job is not None
        assert job["queue"] == "orders"


async def test_a_cancelled_caller_leaves_the_others_answered(client: Client) -> None:
    """Cancelling one publish of a batch in flight does not fail the others."""
    await client.create_webhook("acme", URL)
    tasks = [asyncio.create_task(client.publish("acme", "a.b", {"n": n})) for n in range(5)]
    await asyncio.sleep(0)  # every publish has joined the batch
    tasks[2].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert all(isinstance(r, dict) and r["matched"] == 1 for i, r in enumerate(results) if i != 2)


async def test_out_of_memory_fails_each_caller_as_before(tmp_path: Path) -> None:
    """With Redis at maxmemory, each of several concurrent publishes raises RedisOutOfMemory."""
    server = RedisServer(tmp_path / "oom")
    server.start()
    try:
        async with Client.from_url(server.url, prefix="oom") as client:
            await client.create_webhook("acme", URL)
            used = int((await client.store.redis.info("memory"))["used_memory"])
            await client.store.redis.config_set("maxmemory", used - 1024)  # already over it
            results = await asyncio.gather(
                *(client.publish("acme", "a.b", {"n": n}) for n in range(3)),
                return_exceptions=True,
            )
    finally:
        server.stop()
    assert all(isinstance(r, RedisOutOfMemory) for r in results), results


@pytest.mark.parametrize("field", ["tenant_id", "event_type", "idempotency_key"])
async def test_text_redis_cannot_hold_fails_only_its_own_publish(
    client: Client, field: str
) -> None:
    """A tenant id, event type or idempotency key with a lone surrogate (not UTF-8) is an
    InvalidField for its own publish; a publish in flight beside it is accepted."""
    await client.create_webhook("acme", URL)
    fields = {"tenant_id": "acme", "event_type": "a.b", "idempotency_key": "k"} | {field: "x\ud800"}
    bad, good = await asyncio.gather(
        client.publish(
            fields["tenant_id"], fields["event_type"], {}, idempotency_key=fields["idempotency_key"]
        ),
        client.publish("acme", "a.b", {"n": 1}),
        return_exceptions=True,
    )
    assert isinstance(bad, InvalidField)
    assert bad.field == field
    assert isinstance(good, dict)
    assert good["matched"] == 1


async def test_one_key_in_one_batch_across_shards_is_one_event(
    client: Client, target: Target
) -> None:
    """With three shards, concurrent publishes with one key are one event: one new, the
    others its answer; one with another request is refused; each webhook has one job."""
    await client.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(client, target, 3)
    same = [client.publish_checked("acme", "a.b", {"n": 1}, idempotency_key="k") for _ in range(3)]
    other = client.publish_checked("acme", "a.b", {"n": 2}, idempotency_key="k")
    *results, refused = await asyncio.gather(*same, other, return_exceptions=True)
    assert isinstance(refused, IdempotencyKeyReused)
    answers = [r for r in results if isinstance(r, tuple)]
    assert sorted(new for new, _ in answers) == [False, False, True]
    assert all(answer == answers[0][1] for _, answer in answers)
    assert sorted(j["webhook_id"] for j in answers[0][1]["jobs"]) == sorted(h["id"] for h in hooks)
    for job in answers[0][1]["jobs"]:
        stored = await client.get_job(job["id"])
        assert stored is not None
        assert stored["event_id"] == answers[0][1]["event_id"]
