"""Retrying a delivered job (``jobs.payload_retention_s``) at its edges: stale and repeated
outcomes around a retry, the sweep, queues, priorities and shards, a retried job that dies and
is replayed, and the settings."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import orjson
import pytest

from dispatcher import Conflict, NotFound
from dispatcher.config import load
from dispatcher.errors import ConfigError
from dispatcher.ids import shard_of
from dispatcher.model import JobState
from dispatcher.queue import delays, streams
from tests.helpers import Daemon, daemon_env, eventually, hooks_in_every_shard, settlement
from tests.target import Reply

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from dispatcher.queue.store import Store
    from tests.conftest import WorkerHarness
    from tests.target import Target

KEEP_MS = "3600000"  # what a worker passes settle.lua for jobs.payload_retention_s = 1 h


async def _in_state(client: Client, job_id: str, state: str) -> shapes.Job:
    async def check() -> shapes.Job | None:
        job = await client.get_job(job_id)
        return job if job is not None and job["state"] == state else None

    found: shapes.Job = await eventually(check, what=f"job {job_id} {state}")
    return found


def _payload_key(client: Client, job_id: str) -> str:
    return client.store.of_job(job_id).keys.payload(job_id)


async def _delivered(store: Store, claim: streams.Claim) -> streams.Settlement:
    """``claim``'s outcome as a worker keeping payloads 1 h writes it: delivered."""
    return dataclasses.replace(
        await settlement(store, claim, "D", JobState.DELIVERED), reason=KEEP_MS
    )


async def test_a_stale_delivered_outcome_after_a_retry_leaves_the_retried_job_alone(
    client: Client, store: Store, redis: aioredis.Redis
) -> None:
    """A frozen worker's late "delivered", settled after the job was delivered by the worker
    that took over and retried, keeps the retried job queued with its payload and writes no
    payload key."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    job_id = (await client.publish("acme", "a.b", {"n": 1}))["jobs"][0]["id"]
    [claim_a], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    [claim_b] = (
        await streams.reclaim_page(store, "default", "b", min_idle_ms=0, cursor="0-0", count=10)
    ).claims
    assert await streams.settle(store, "b", [await _delivered(store, claim_b)]) == []
    assert await redis.exists(_payload_key(client, job_id)) == 1
    late = await _delivered(store, claim_a)
    retried = await client.retry_job(job_id)
    assert retried["state"] == "queued"
    assert await streams.settle(store, "a", [late]) == [job_id]
    assert await redis.exists(_payload_key(client, job_id)) == 0
    job = await _in_state(client, job_id, "queued")
    assert job["attempts"][-1]["late"] is True
    [claim_c], _ = await streams.wait_new(store, ("default",), "c", count=10, block_ms=10)
    [loaded] = (await streams.load(store, [claim_c])).jobs
    assert loaded is not None
    assert orjson.loads(loaded.payload) == {"n": 1}


async def test_a_delivered_outcome_written_twice_is_retried_once(
    client: Client, store: Store, redis: aioredis.Redis
) -> None:
    """The same delivered outcome settled twice (a batch written again) leaves one done entry
    and one payload key; the job is retried once, then refused as queued."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    job_id = (await client.publish("acme", "a.b", {"n": 1}))["jobs"][0]["id"]
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    outcome = await _delivered(store, claim)
    assert await streams.settle(store, "a", [outcome]) == []
    assert await streams.settle(store, "a", [outcome]) == [job_id]
    assert await redis.zcard(store.keys.done) == 1
    await client.retry_job(job_id)
    assert await redis.zcard(store.keys.done) == 0
    with pytest.raises(Conflict, match="already queued"):
        await client.retry_job(job_id)


async def test_the_sweep_never_forgets_a_retried_job_and_a_swept_one_is_not_found(
    client: Client, store: Store, redis: aioredis.Redis
) -> None:
    """A retried delivered job is out of the done zset, so a sweep of every finished record
    leaves it queued; a delivered job swept before its retry answers 404."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    ids = [(await client.publish("acme", "a.b", {"n": n}))["jobs"][0]["id"] for n in (1, 2)]
    claims, _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    outcomes = [await _delivered(store, claim) for claim in claims]
    assert await streams.settle(store, "a", outcomes) == []
    await client.retry_job(ids[0])
    future = store.clock.now_ms() + 86_400_000
    assert await delays.sweep_finished(store, cutoff_ms=future) == 1
    assert (await _in_state(client, ids[0], "queued"))["id"] == ids[0]
    with pytest.raises(NotFound):
        await client.retry_job(ids[1])


async def test_a_retried_job_that_dies_is_replayed_and_retried_again(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis
) -> None:
    """Delivered, retried into a failure that kills it, replayed by a retry, then retried once
    more: each series reaches the target with the same big body, the DLQ is left empty, and
    the job ends delivered with a payload key again."""
    target.script("/hook", Reply(200), Reply(500), Reply(200), Reply(200))
    await workers.start(max_attempts=1)
    await client.create_webhook("acme", target.url())
    payload = {"blob": "é" * 100_000}
    job_id = (await client.publish("acme", "a.b", payload))["jobs"][0]["id"]
    await _in_state(client, job_id, "delivered")
    await client.retry_job(job_id)
    await _in_state(client, job_id, "dead")
    assert await redis.exists(_payload_key(client, job_id)) == 0
    await client.retry_job(job_id)  # a dead job: replayed
    await _in_state(client, job_id, "delivered")
    await client.retry_job(job_id)
    requests = await target.wait_for(4, "/hook")
    job = await _in_state(client, job_id, "delivered")
    assert [a["status"] for a in job["attempts"]] == [200, 500, 200, 200]
    assert all(orjson.loads(r.body) == payload for r in requests)
    assert {r.headers["webhook-id"] for r in requests} == {job_id}
    assert (await client.list_dlq())["items"] == []
    assert await redis.exists(_payload_key(client, job_id)) == 1
    assert await redis.zscore(client.store.of_job(job_id).keys.done, job_id) is not None


async def test_a_delivered_job_on_another_queue_and_priority_goes_back_there(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A high-priority job of a webhook on queue "bulk" is retried into the same stream."""
    await workers.start(queues=("default", "bulk"))
    await client.create_webhook("acme", target.url(), queue="bulk")
    job_id = (await client.publish("acme", "a.b", {"n": 1}, priority="high"))["jobs"][0]["id"]
    first = await _in_state(client, job_id, "delivered")
    retried = await client.retry_job(job_id)
    assert (retried["queue"], retried["priority"]) == (first["queue"], first["priority"])
    assert (retried["queue"], retried["priority"]) == ("bulk", "high")
    await target.wait_for(2, "/hook")
    assert (await _in_state(client, job_id, "delivered"))["attempt"] == 1


async def test_a_delivered_job_of_a_deleted_webhook_is_refused(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A delivered job whose webhook was deleted since answers 409 naming it, unsent."""
    await workers.start()
    hook = await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {"n": 1}))["jobs"][0]["id"]
    await _in_state(client, job_id, "delivered")
    await client.delete_webhook(hook["id"])
    with pytest.raises(Conflict, match="deleted"):
        await client.retry_job(job_id)
    assert target.count() == 1


async def test_delivered_jobs_are_retried_in_every_shard(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis
) -> None:
    """With redis.shards = 3, a delivered job of each shard shows its retry_until, keeps its
    payload key in its own shard, and is sent again by its retry."""
    await client.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(client, target, 3, per_shard=1)
    await workers.start(shards=3)
    jobs = (await client.publish("acme", "a.b", {"n": 1}))["jobs"]
    assert {shard_of(j["webhook_id"]) for j in jobs} == {0, 1, 2}
    for job in jobs:
        shown = await _in_state(client, job["id"], "delivered")
        assert shown["retry_until"] is not None
        assert await redis.exists(_payload_key(client, job["id"])) == 1
        await client.retry_job(job["id"])
    await target.wait_for(2 * len(hooks), "/hook")
    for job in jobs:
        assert len((await _in_state(client, job["id"], "delivered"))["attempts"]) == 2


@pytest.mark.parametrize("value", ["-1", '"soon"', "true"])
def test_a_bad_payload_retention_is_a_config_error(tmp_path: Path, value: str) -> None:
    """jobs.payload_retention_s must be a duration or 0."""
    path = tmp_path / "d.toml"
    path.write_text(f"[jobs]\npayload_retention_s = {value}\n")
    with pytest.raises(ConfigError, match="payload_retention_s"):
        load(path, {})


async def test_a_delivered_task_run_is_run_again_by_its_retry(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A task run that succeeded shows until when it can be retried, and its retry runs it
    again with the same job id and JSON args, as a new series of attempts."""
    env = daemon_env(
        redis_url,
        prefix,
        delivery_timeout_s="1",
        delivery_stall_timeout_s="2",
        tasks_modules="tests.task_examples",
    )
    env["TASK_TEST_DIR"] = str(logs_dir)
    daemon = Daemon(env, logs_dir / "d.log").start()
    out = logs_dir / "out"
    try:

        async def registered() -> bool:
            return any(t["name"] == "tests.record" for t in (await client.list_tasks())["items"])

        await eventually(registered, timeout_s=10)
        answer = await client.enqueue_task("tests.record", {"path": str(out), "value": [1, "é"]})
        job_id = answer["id"]
        shown = await _in_state(client, job_id, "delivered")
        assert shown["retry_until"] is not None
        await client.retry_job(job_id)

        async def ran_twice() -> bool:
            return out.exists() and len(out.read_text().splitlines()) == 2

        await eventually(ran_twice, timeout_s=10, what="the task run again")
        job = await _in_state(client, job_id, "delivered")
    finally:
        daemon.stop()
    runs = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert runs == [{"job_id": job_id, "attempt": 1, "value": [1, "é"]}] * 2
    assert len(job["attempts"]) == 2
