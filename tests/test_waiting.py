"""Jobs waiting for room (max_in_flight, a process's share of an endpoint) wait in their
webhook's waiting set and come back as room frees, against a real Redis and HTTP target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispatcher.model import JobState
from dispatcher.queue import admission, codec, streams, waiting
from dispatcher.queue.keys import Keys
from dispatcher.queue.streams import SettleKind, Settlement
from tests.helpers import eventually
from tests.target import Reply

if TYPE_CHECKING:
    import pytest
    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from tests.conftest import WorkerHarness
    from tests.target import Target


async def _publish(client: Client, tenant: str, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):
        events = [
            {"tenant_id": tenant, "event_type": "order.created", "payload": {"n": i}}
            for i in range(start, min(n, start + 500))
        ]
        for answer in await client.publish_many(events):
            assert isinstance(answer, dict)
            ids += [job["id"] for job in answer["jobs"]]
    return ids


def _deferred(workers: WorkerHarness) -> float:
    counters = workers.metrics.counters
    return sum(v for (name, _), v in counters.items() if name == "dispatcher_deferred_total")


def _churn(workers: WorkerHarness) -> float:
    """Deferrals and promotions so far: the Redis work a waiting backlog costs."""
    return _deferred(workers) + workers.metrics.get("dispatcher_promoted_total")


async def _states(client: Client, ids: list[str]) -> list[shapes.Job]:
    jobs = [await client.get_job(i) for i in ids]
    assert all(job is not None for job in jobs)
    return [job for job in jobs if job is not None]


async def test_a_backlog_behind_max_in_flight_costs_work_per_delivery_not_per_backlog(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A backlog of thousands behind max_in_flight=1 is claimed once; from then on it costs
    Redis a few deferrals or promotions per delivery, not the whole backlog every few seconds,
    and another webhook's jobs go through while the backlog is still large."""
    backlog = 3000
    await client.create_webhook("capped", target.url("/capped"), max_in_flight=1)
    await client.create_webhook("others", target.url("/others"))
    await _publish(client, "capped", backlog)
    await workers.start()
    await eventually(
        lambda: _deferred(workers) + target.count("/capped") >= backlog,
        timeout_s=30,
        what="the backlog claimed once",
    )
    churn, sent, requests = _churn(workers), target.count("/capped"), target.count()
    await _publish(client, "others", 200)
    await target.wait_for(200, "/others", timeout_s=20)
    await target.wait_for(sent + 40, "/capped", timeout_s=20)
    assert _churn(workers) - churn <= target.count() - requests  # at most one per delivery
    assert target.count("/capped") < backlog / 2  # the backlog is still large
    assert target.peak["/capped"] == 1


async def test_a_backlog_beyond_the_rate_horizon_waits_without_churn(
    client: Client, workers: WorkerHarness, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs of a rate-limited backlog beyond the reservation horizon wait for slots to come
    within it, rather than all coming back every horizon: a few deferrals and promotions per
    delivery, and the backlog still drains at the rate."""
    monkeypatch.setattr(admission, "HORIZON_MS", 1_000)  # the backlog is 30 horizons long
    backlog = 600
    await client.create_webhook(
        "limited", target.url("/limited"), rate_limit={"per_second": 20, "burst": 1}
    )
    await _publish(client, "limited", backlog)
    await workers.start()
    await eventually(
        lambda: _deferred(workers) + target.count() >= backlog,
        timeout_s=30,
        what="the backlog claimed once",
    )
    churn, sent = _churn(workers), target.count()
    await target.wait_for(sent + 40, timeout_s=20)
    assert _churn(workers) - churn <= 5 * (target.count() - sent)


async def test_a_waiting_job_says_what_it_waits_for(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """A job held back by max_in_flight shows as scheduled, waiting for max_in_flight, with no
    attempt spent, and is delivered once with one attempt when its turn comes."""
    target.script("/capped", Reply(delay_s=0.3))
    hook = await client.create_webhook("capped", target.url("/capped"), max_in_flight=1)
    ids = await _publish(client, "capped", 6)
    await workers.start()
    key = Keys(prefix).waiting(hook["id"])
    await eventually(lambda: redis.zcard(key), what="jobs waiting for room")
    [first] = await redis.zrange(key, 0, 0)
    assert isinstance(first, bytes)
    job_id = first.decode()
    job = await client.get_job(job_id)
    assert job is not None
    assert (job["state"], job["waiting_for"], job["attempt"]) == ("scheduled", "max_in_flight", 0)
    assert (await client.status())["scheduled"] >= 1  # counted as scheduled, as parked jobs are
    await eventually(
        lambda: _all(client, ids, "delivered"), timeout_s=20, what="every job delivered"
    )
    assert {len(j["attempts"]) for j in await _states(client, ids)} == {1}
    assert target.peak["/capped"] == 1
    assert not await redis.exists(key)


async def _all(client: Client, ids: list[str], state: str) -> bool:
    return {j["state"] for j in await _states(client, ids)} == {state}


async def test_waiting_jobs_of_a_deleted_webhook_are_dead_lettered(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """Deleting a webhook whose jobs wait for room loses none of them: each is delivered or
    dead-lettered as webhook_deleted, as jobs of a deleted webhook always are."""
    target.script("/capped", Reply(delay_s=1.0))
    hook = await client.create_webhook("capped", target.url("/capped"), max_in_flight=1)
    ids = await _publish(client, "capped", 20)
    await workers.start()
    key = Keys(prefix).waiting(hook["id"])
    await eventually(lambda: _at_least(redis.zcard(key), 15), what="jobs waiting for room")
    await client.delete_webhook(hook["id"])
    await eventually(
        lambda: _finished(client, ids), timeout_s=20, what="every job delivered or dead"
    )
    dead = [j for j in await _states(client, ids) if j["state"] == "dead"]
    assert len(dead) >= 15
    assert {j["dead_reason"] for j in dead} == {"webhook_deleted"}


async def _at_least(count: Any, n: int) -> bool:
    return int(await count) >= n


async def _finished(client: Client, ids: list[str]) -> bool:
    return {j["state"] for j in await _states(client, ids)} <= {"delivered", "dead"}


async def test_waiting_jobs_nobody_releases_go_out_after_the_tick(
    client: Client,
    workers: WorkerHarness,
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Jobs left waiting by a worker that died (no attempt of theirs left to release them)
    are put back by the tick: those of a max_in_flight webhook as soon as its leases leave
    room, those of any other webhook once nothing has released them for a while."""
    monkeypatch.setattr(waiting, "IDLE_MS", 500)
    capped = await client.create_webhook("capped", target.url("/capped"), max_in_flight=1)
    free = await client.create_webhook("free", target.url("/free"))
    store = client.store
    await streams.ensure_group(store, "default")
    ids = await _publish(client, "capped", 3) + await _publish(client, "free", 3)
    claims, _ = await streams.claim_new(store, ("default",), "dead-worker", budget=10)
    loaded = await streams.load(store, claims)
    late = b'[0,null,0,"no attempt",1]'
    items = []
    for claim, job in zip(claims, loaded.jobs, strict=True):
        assert job is not None
        job.state = JobState.SCHEDULED
        job.waiting = "max_in_flight" if claim.webhook_id == capped["id"] else "endpoint_capacity"
        items.append(
            Settlement(
                claim,
                SettleKind.WAITING,
                codec.encode(job),
                job.created_at_ms,
                "",
                late,
                waiting_in=claim.webhook_id,
            )
        )
    assert await streams.settle(store, "dead-worker", items) == []
    assert await waiting.count(store, capped["id"]) == 3
    assert await waiting.count(store, free["id"]) == 3
    await workers.start()
    await eventually(lambda: _all(client, ids, "delivered"), timeout_s=20, what="all delivered")


async def test_a_rate_slower_than_one_per_horizon_still_drains(
    client: Client, workers: WorkerHarness, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook limited to less than one request per reservation horizon gets every job out,
    one per interval (before: the tick counted no whole slot within the horizon and released
    nothing, so all jobs after the first waited forever)."""
    monkeypatch.setattr(admission, "HORIZON_MS", 500)  # the interval is twice the horizon
    await client.create_webhook(
        "slow", target.url("/slow"), rate_limit={"per_second": 1, "burst": 1}
    )
    await _publish(client, "slow", 4)
    await workers.start()
    arrived = await target.wait_for(4, "/slow", timeout_s=30)
    assert len(arrived) == 4
