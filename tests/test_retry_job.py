"""``POST /v1/jobs/{id}/retry`` and ``Client.retry_job``: an existing job sent again, with the
same ``webhook-id``, as a new series of attempts that keeps the earlier ones in its history."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

import orjson
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from dispatcher import Conflict, NotFound
from dispatcher.config import load
from dispatcher.errors import ConfigError
from dispatcher.ids import shard_of
from dispatcher.model import JobState
from dispatcher.queue import codec, delays, streams
from tests.helpers import (
    Daemon,
    daemon_env,
    eventually,
    hooks_in_every_shard,
    seed_dead_jobs,
    settlement,
)
from tests.target import Reply

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from dispatcher.queue.store import Store
    from tests.admin_api import Api
    from tests.conftest import WorkerHarness
    from tests.target import Target


async def _publish(client: Client, url: str) -> str:
    hook = await client.create_webhook("acme", url)
    answer = await client.publish("acme", "order.paid", {"order": 42})
    return next(job["id"] for job in answer["jobs"] if job["webhook_id"] == hook["id"])


async def _in_state(client: Client, job_id: str, state: str) -> shapes.Job:
    async def check() -> shapes.Job | None:
        job = await client.get_job(job_id)
        return job if job is not None and job["state"] == state else None

    found: shapes.Job = await eventually(check, what=f"job {job_id} {state}")
    return found


async def test_a_dead_job_is_sent_again_with_its_id_and_its_history(
    client: Client, api: Api, workers: WorkerHarness, target: Target
) -> None:
    """A dead job's retry answers 202 queued, reaches the target with the same webhook-id,
    and its history holds both series of attempts."""
    target.script("/hook", Reply(500, b"down"), Reply(204, b""))
    await workers.start(max_attempts=1)
    job_id = await _publish(client, target.url())
    await _in_state(client, job_id, "dead")
    answer = await api.call("POST", f"/v1/jobs/{job_id}/retry")
    assert answer.status == 202, answer.text
    assert answer.body["id"] == job_id
    assert answer.body["state"] in {"queued", "active", "delivered"}
    job = await _in_state(client, job_id, "delivered")
    assert [a["status"] for a in job["attempts"]] == [500, 204]
    assert job["attempt"] == 1  # a new series: its first attempt delivered
    first, second = await target.wait_for(2, "/hook")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == job_id
    assert (await client.list_dlq())["items"] == []


async def test_a_job_scheduled_for_a_retry_is_sent_now(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A failed job waiting a minute for its next attempt is sent at once, attempts reset."""
    target.script("/hook", Reply(500, b"down"), Reply(204, b""))
    await workers.start(max_attempts=5, backoff_base_s=60, backoff_cap_s=60)
    job_id = await _publish(client, target.url())
    await _in_state(client, job_id, "scheduled")
    retried = await client.retry_job(job_id)
    assert retried["id"] == job_id
    assert retried["state"] in {"queued", "active", "delivered"}
    assert retried["next_attempt_at"] is None
    job = await _in_state(client, job_id, "delivered")
    assert [a["status"] for a in job["attempts"]] == [500, 204]
    assert job["attempt"] == 1
    assert target.count("/hook") == 2


async def test_queued_and_unknown_jobs_are_refused(
    client: Client, api: Api, target: Target
) -> None:
    """A queued job answers 409, an unknown id 404, and nothing is sent."""
    queued = await _publish(client, target.url("/later"))  # no worker yet: it stays queued
    answer = await api.call("POST", f"/v1/jobs/{queued}/retry")
    assert (answer.status, answer.body["error"]["code"]) == (409, "conflict")
    assert "already queued or in flight" in answer.body["error"]["message"]
    with pytest.raises(Conflict):
        await client.retry_job(queued)
    for unknown in ("job_nothing", "job_0000000000000000000000000.0.1"):
        answer = await api.call("POST", f"/v1/jobs/{unknown}/retry")
        assert (answer.status, answer.body["error"]["code"]) == (404, "not_found")
    with pytest.raises(NotFound):
        await client.retry_job("job_nothing")
    assert target.count() == 0


async def test_a_dead_job_that_cannot_go_back_is_refused_as_a_replay_is(
    client: Client, api: Api, redis: aioredis.Redis, prefix: str
) -> None:
    """A dead job of a disabled webhook answers 409 not_replayable naming it, and stays dead."""
    [job_id] = await seed_dead_jobs(client, redis, prefix, 1)
    job = await client.get_job(job_id)
    assert job is not None
    assert job["webhook_id"] is not None
    await client.update_webhook(job["webhook_id"], enabled=False)
    answer = await api.call("POST", f"/v1/jobs/{job_id}/retry")
    assert (answer.status, answer.body["error"]["code"]) == (409, "not_replayable")
    assert answer.body["refused"][0]["id"] == job_id
    assert answer.body["refused"][0]["reason"] == "webhook_disabled"
    assert (await _in_state(client, job_id, "dead"))["id"] == job_id


async def test_a_job_scheduled_by_deliver_at_is_not_sent_early(
    client: Client, api: Api, target: Target
) -> None:
    """A job waiting for its deliver_at (never attempted) answers 409 and keeps its time."""
    hook = await client.create_webhook("acme", target.url())
    answer = await client.publish(
        "acme", "order.paid", {"order": 42}, deliver_at="2099-01-01T00:00:00Z"
    )
    job_id = next(job["id"] for job in answer["jobs"] if job["webhook_id"] == hook["id"])
    reply = await api.call("POST", f"/v1/jobs/{job_id}/retry")
    assert (reply.status, reply.body["error"]["code"]) == (409, "conflict"), reply.text
    assert "deliver_at" in reply.body["error"]["message"]
    job = await _in_state(client, job_id, "scheduled")
    assert job["next_attempt_at"] == "2099-01-01T00:00:00.000Z"


def _payload_key(client: Client, job_id: str) -> str:
    return client.store.of_job(job_id).keys.payload(job_id)


async def test_a_delivered_job_is_sent_again_with_its_id_signature_and_history(
    client: Client, api: Api, workers: WorkerHarness, target: Target, redis: aioredis.Redis
) -> None:
    """A delivered job shows until when it can be retried; its retry (its payload kept by
    default) answers 202, reaches the target again with the same webhook-id, body and a valid
    signature, counts as a new delivery, and its history holds both series."""
    await workers.start()
    hook = await client.create_webhook("acme", target.url())
    answer = await client.publish("acme", "order.paid", {"order": 42})
    [job_id] = [job["id"] for job in answer["jobs"]]
    await _in_state(client, job_id, "delivered")
    assert await redis.exists(_payload_key(client, job_id)) == 1
    shown = await api.call("GET", f"/v1/jobs/{job_id}")
    assert shown.body["retry_until"] > shown.body["finished_at"]  # both RFC 3339, UTC
    reply = await api.call("POST", f"/v1/jobs/{job_id}/retry")
    assert reply.status == 202, reply.text
    assert reply.body["state"] in {"queued", "active", "delivered"}
    first, second = await target.wait_for(2, "/hook")
    job = await _in_state(client, job_id, "delivered")
    assert [a["status"] for a in job["attempts"]] == [200, 200]
    assert job["attempt"] == 1  # a new series: its first attempt delivered
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == job_id
    assert orjson.loads(second.body) == {"order": 42}
    Verifier(hook["secret"]).verify(second.body, dict(second.headers))

    async def counted() -> bool:
        return (await client.webhook_stats(hook["id"]))["delivered"] == 2

    await eventually(counted, what="both deliveries counted")


@pytest.mark.parametrize("retention_s", [0.0, 0.5])
async def test_a_delivered_job_whose_payload_is_gone_is_refused_naming_the_setting(
    client: Client,
    api: Api,
    workers: WorkerHarness,
    target: Target,
    redis: aioredis.Redis,
    retention_s: float,
) -> None:
    """With jobs.payload_retention_s 0 a delivered job keeps no payload, with a short one its
    payload key expires by itself; then it shows no retry_until, and its retry answers 409
    naming the setting, unsent."""
    client.payload_retention_s = retention_s  # as the daemon passes its own
    await workers.start(payload_retention_s=retention_s)
    job_id = await _publish(client, target.url())
    await _in_state(client, job_id, "delivered")

    async def gone() -> bool:
        return await redis.exists(_payload_key(client, job_id)) == 0

    await eventually(gone, what="the payload key gone")
    assert (await _in_state(client, job_id, "delivered"))["retry_until"] is None
    reply = await api.call("POST", f"/v1/jobs/{job_id}/retry")
    assert (reply.status, reply.body["error"]["code"]) == (409, "conflict"), reply.text
    message = reply.body["error"]["message"]
    assert "payload_retention_s" in message
    assert ("is 0" if retention_s == 0 else "(0.5 s)") in message
    with pytest.raises(Conflict, match="payload_retention_s"):
        await client.retry_job(job_id)
    assert target.count() == 1
    assert (await _in_state(client, job_id, "delivered"))["attempt"] == 1


async def test_two_concurrent_retries_of_a_delivered_job_send_it_once(
    client: Client, api: Api, workers: WorkerHarness, target: Target
) -> None:
    """Of two retries of one delivered job at once, one answers 202 and the other 409, and
    the job is sent once more."""
    await workers.start()
    job_id = await _publish(client, target.url())
    await _in_state(client, job_id, "delivered")
    await workers.stop()  # nothing delivers it again before both retries answered
    replies = await asyncio.gather(
        *(api.call("POST", f"/v1/jobs/{job_id}/retry") for _ in range(2))
    )
    assert sorted(r.status for r in replies) == [202, 409]
    assert "already queued" in next(r for r in replies if r.status == 409).text
    await workers.start()
    job = await _in_state(client, job_id, "delivered")
    assert len(job["attempts"]) == 2
    assert target.count("/hook") == 2


async def test_a_retried_fifo_job_goes_to_the_back_of_its_lane(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis
) -> None:
    """A delivered job of a FIFO webhook, retried while its lane holds later jobs, waits
    behind them and is sent after them."""
    hook = await client.create_webhook("acme", target.url(), ordering="fifo")
    await workers.start()
    first = (await client.publish("acme", "order.paid", {"seq": 1}))["jobs"][0]["id"]
    await _in_state(client, first, "delivered")
    await workers.stop()
    later = [
        (await client.publish("acme", "order.paid", {"seq": seq}))["jobs"][0]["id"]
        for seq in (2, 3)
    ]
    retried = await client.retry_job(first)
    assert (retried["state"], retried["waiting_for"]) == ("queued", "ordering")
    lane = client.store.of_webhook(hook["id"]).keys.lane(hook["id"])
    assert await redis.lrange(lane, 0, -1) == [j.encode() for j in (*later, first)]
    await workers.start()
    await target.wait_for(4)
    assert [orjson.loads(r.body)["seq"] for r in target.received] == [1, 2, 3, 1]
    assert (await _in_state(client, first, "delivered"))["attempt"] == 1


async def test_a_delivered_job_of_a_disabled_webhook_is_refused(
    client: Client, api: Api, workers: WorkerHarness, target: Target
) -> None:
    """A delivered job whose webhook was disabled since answers 409 (it would die unsent),
    and its payload stays kept for a retry once the webhook is enabled again."""
    await workers.start()
    job_id = await _publish(client, target.url())
    webhook_id = (await _in_state(client, job_id, "delivered"))["webhook_id"]
    assert webhook_id is not None
    await client.update_webhook(webhook_id, enabled=False)
    reply = await api.call("POST", f"/v1/jobs/{job_id}/retry")
    assert (reply.status, reply.body["error"]["code"]) == (409, "conflict"), reply.text
    assert "disabled" in reply.body["error"]["message"]
    await client.update_webhook(webhook_id, enabled=True)
    assert (await api.call("POST", f"/v1/jobs/{job_id}/retry")).status == 202
    await target.wait_for(2, "/hook")


KEEP_MS = "3600000"  # what a worker passes settle.lua for jobs.payload_retention_s = 1 h


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


async def test_a_delivered_payload_is_taken_back_byte_for_byte(
    client: Client, store: Store, redis: aioredis.Redis
) -> None:
    """Payload bytes that are not UTF-8 and hold newlines are kept and taken back unchanged."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    job_id = (await client.publish("acme", "a.b", {"n": 1}))["jobs"][0]["id"]
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    [job] = (await streams.load(store, [claim])).jobs
    assert job is not None
    raw = b"\xff\n\x00\xfe\n"
    job.payload = raw
    job.attempt += 1
    job.delivered(store.clock.now_ms())
    outcome = streams.Settlement(
        claim,
        streams.SettleKind.DELIVERED,
        codec.encode(job),
        job.finished_at_ms or 0,
        KEEP_MS,
        b"",
    )
    assert await streams.settle(store, "a", [outcome]) == []
    assert await redis.get(_payload_key(client, job_id)) == raw
    record = await redis.hget(store.keys.jobs, job_id)
    assert isinstance(record, bytes)
    assert record.endswith(b"}\n")  # the record keeps no payload
    await client.retry_job(job_id)
    [again], _ = await streams.wait_new(store, ("default",), "b", count=10, block_ms=10)
    [loaded] = (await streams.load(store, [again])).jobs
    assert loaded is not None
    assert loaded.payload == raw


async def test_a_retried_job_in_flight_is_not_retried_again(
    client: Client, store: Store, redis: aioredis.Redis
) -> None:
    """A retried delivered job that a worker holds answers 409 and keeps its one entry."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    job_id = (await client.publish("acme", "a.b", {"n": 1}))["jobs"][0]["id"]
    [claim], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    assert await streams.settle(store, "a", [await _delivered(store, claim)]) == []
    await client.retry_job(job_id)
    [again], _ = await streams.wait_new(store, ("default",), "b", count=10, block_ms=10)
    assert again.job_id == job_id
    assert (await _in_state(client, job_id, "active"))["id"] == job_id
    with pytest.raises(Conflict, match="in flight"):
        await client.retry_job(job_id)
    assert await redis.xlen(store.keys.ready("default")) == 1
    assert await redis.exists(_payload_key(client, job_id)) == 0
