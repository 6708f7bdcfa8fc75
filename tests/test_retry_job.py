"""``POST /v1/jobs/{id}/retry`` and ``Client.retry_job``: an existing job sent again, with the
same ``webhook-id``, as a new series of attempts that keeps the earlier ones in its history."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from dispatcher import Conflict, NotFound
from tests.admin_api import Api, start_api
from tests.helpers import eventually, seed_dead_jobs
from tests.target import Reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from tests.conftest import WorkerHarness
    from tests.target import Target


@pytest.fixture
async def api(client: Client) -> AsyncIterator[Api]:
    _app, api = await start_api(client)
    yield api
    await api.close()


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
