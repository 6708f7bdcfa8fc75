"""A pause that keeps events: ``PATCH /v1/webhooks/{id}`` with ``{"paused": true}`` holds a
webhook's jobs without attempts until ``{"paused": false}``, unlike ``enabled: false``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from dispatcher.alerts import Alerts
from dispatcher.config import AlertsConfig
from dispatcher.metrics import Metrics
from dispatcher.queue import backlog, breakers, codec, pauses, streams
from dispatcher.queue.keys import Keys
from dispatcher.queue.streams import SettleKind, Settlement
from tests.helpers import Daemon, daemon_env, eventually, stop_daemons

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from dispatcher.queue.streams import Claim
    from tests.admin_api import Api
    from tests.conftest import WorkerHarness
    from tests.target import Target


async def _publish(client: Client, tenant: str, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        answer = await client.publish(tenant, "order.created", {"n": i})
        ids += [job["id"] for job in answer["jobs"]]
    return ids


async def _jobs(client: Client, ids: list[str]) -> list[shapes.Job]:
    jobs = await asyncio.gather(*(client.get_job(i) for i in ids))
    return [job for job in jobs if job is not None]


def _waiting_for(reason: str, client: Client, ids: list[str]) -> Any:
    async def check() -> bool:
        jobs = await _jobs(client, ids)
        return {(j["state"], j["waiting_for"], j["attempt"]) for j in jobs} == {
            ("scheduled", reason, 0)
        }

    return check


async def _pause(api: Api, webhook_id: str, paused: bool) -> dict[str, Any]:
    answer = await api.call("PATCH", f"/v1/webhooks/{webhook_id}", json={"paused": paused})
    assert answer.status == 200, answer.body
    assert answer.body["paused"] is paused
    return answer.body  # type: ignore[no-any-return]


async def test_a_paused_webhook_keeps_its_events_and_resume_drains_them_in_order(
    api: Api, client: Client, workers: WorkerHarness, target: Target
) -> None:
    """While paused, publishes are accepted and their jobs wait (``waiting_for: paused``, no
    attempt, counted in the status) as another webhook's go out; resumed, every job is
    delivered once, in publish order, within the webhook's rate limit."""
    hook = await client.create_webhook(
        "acme", target.url("/paused"), rate_limit={"per_second": 10, "burst": 1}
    )
    assert hook["paused"] is False
    await client.create_webhook("other", target.url("/other"))
    await _pause(api, hook["id"], True)
    await workers.start()
    ids = await _publish(client, "acme", 12)
    await eventually(_waiting_for("paused", client, ids), what="every job held")
    await _publish(client, "other", 1)  # the workers go on delivering other webhooks
    await target.wait_for(1, "/other")
    assert target.count("/paused") == 0
    status = (await api.call("GET", "/v1/status")).body
    assert status["paused_jobs"] == 12
    assert status["scheduled"] >= 12
    await _pause(api, hook["id"], False)
    got = await target.wait_for(12, "/paused", timeout_s=10)
    assert [orjson.loads(r.body)["n"] for r in got] == list(range(12))
    assert got[-1].at - got[0].at > 11 * 0.1 * 0.9  # 10/s: 11 intervals of 0.1 s
    jobs = await eventually(lambda: _all_delivered(client, ids), what="every job delivered")
    assert {len(j["attempts"]) for j in jobs} == {1}
    assert (await api.call("GET", "/v1/status")).body["paused_jobs"] == 0


async def _all_delivered(client: Client, ids: list[str]) -> list[shapes.Job] | None:
    jobs = await _jobs(client, ids)
    return jobs if {j["state"] for j in jobs} == {"delivered"} else None


async def test_a_pause_and_an_open_breaker_release_only_their_own_jobs(
    api: Api, client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Resuming leaves jobs behind an open breaker parked, and a breaker closing while the
    webhook is paused does not send its jobs: they are held; once both let go, all go out."""
    hook = await client.create_webhook("acme", target.url("/both"))
    store = client.store.of_webhook(hook["id"])
    now_ms = store.clock.now_ms()
    opened = {"s": "open", "b": now_ms, "c": [0, 0], "p": [0, 0], "f": 0, "n": 1, "o": now_ms}
    opened["u"] = now_ms + 600_000
    await store.redis.hset(store.keys.breakers, hook["id"], orjson.dumps(opened))
    await workers.start()
    ids = await _publish(client, "acme", 3)
    await eventually(_waiting_for("breaker", client, ids), what="parked behind the breaker")
    await _pause(api, hook["id"], True)
    ids += await _publish(client, "acme", 2, start=3)
    await eventually(_waiting_for("paused", client, ids[3:]), what="the new ones held")
    await _pause(api, hook["id"], False)
    await eventually(_waiting_for("breaker", client, ids), what="all parked, none sent")
    await _pause(api, hook["id"], True)
    await breakers.reset(store, hook["id"])  # the breaker closes while the webhook is paused
    await eventually(_waiting_for("paused", client, ids), what="all held, none sent")
    assert target.count("/both") == 0
    await _pause(api, hook["id"], False)
    got = await target.wait_for(5, "/both")
    assert sorted(orjson.loads(r.body)["n"] for r in got) == list(range(5))


async def test_disabling_or_deleting_a_paused_webhook_dead_letters_its_held_jobs(
    api: Api, client: Client, workers: WorkerHarness, target: Target
) -> None:
    """``enabled: false`` keeps its meaning for a paused webhook: its held jobs go to the DLQ
    (replayable), as they do when it is deleted; nothing is attempted."""
    disabled = await client.create_webhook("acme", target.url("/disabled"))
    deleted = await client.create_webhook("acme", target.url("/deleted"))
    await _pause(api, disabled["id"], True)
    await _pause(api, deleted["id"], True)
    await workers.start()
    answers = [await client.publish("acme", "order.created", {"n": n}) for n in range(3)]
    ids = [job["id"] for answer in answers for job in answer["jobs"]]
    await eventually(_waiting_for("paused", client, ids), what="every job held")
    changed = await api.call("PATCH", f"/v1/webhooks/{disabled['id']}", json={"enabled": False})
    assert changed.status == 200
    assert (await api.call("DELETE", f"/v1/webhooks/{deleted['id']}")).status == 204

    async def dead() -> dict[str | None, str | None] | None:
        jobs = await _jobs(client, ids)
        states = {j["webhook_id"]: j["dead_reason"] for j in jobs if j["state"] == "dead"}
        return states if len([j for j in jobs if j["state"] == "dead"]) == 6 else None

    reasons = await eventually(dead, what="every held job dead-lettered")
    assert reasons == {disabled["id"]: "webhook_disabled", deleted["id"]: "webhook_deleted"}
    assert (await api.call("GET", "/v1/status")).body["dlq_size"] == 6
    assert target.count() == 0


def _held(claim: Claim) -> Settlement:
    """The outcome a worker writes for a claimed job of a paused webhook (outcomes.hold)."""
    assert claim.inline is not None
    claim.inline.hold()
    record = codec.encode(claim.inline)
    return Settlement(claim, SettleKind.HELD, record, 1, "", b"", parked_for=claim.webhook_id)


async def test_a_settle_after_the_resume_cannot_hold_the_job_again(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A worker that claimed a job while its webhook was paused and settles it after the
    resume finds the job due again, not held where no resume would ever release it."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    await client.update_webhook(hook["id"], paused=True)
    await client.publish("acme", "order.created", {"n": 0})
    store = client.store.of_webhook(hook["id"])
    await streams.ensure_group(store, "default")
    claims, _ = await streams.claim_new(store, ("default",), "w1", budget=10)
    [claim] = claims
    await client.update_webhook(hook["id"], paused=False)  # resumed before the settle
    assert await streams.settle(store, "w1", [_held(claim)]) == []
    keys = Keys(prefix)
    assert await redis.zcard(keys.held(hook["id"])) == 0
    assert await redis.zscore(keys.delayed("default"), claim.job_id) is not None


async def test_a_paused_backlog_shows_in_the_backlog_alert(client: Client) -> None:
    """Held jobs count towards the queued alert, so a paused webhook's growing backlog is
    seen like any other."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    await client.update_webhook(hook["id"], paused=True)
    store = client.store.of_webhook(hook["id"])
    await streams.ensure_group(store, "default")
    for n in range(3):
        await client.publish("acme", "order.created", {"n": n})
    claims, _ = await streams.claim_new(store, ("default",), "w1", budget=10)
    settled = []
    for claim in claims:
        assert claim.inline is not None
        claim.inline.hold()
        record = codec.encode(claim.inline)
        settled.append(
            Settlement(claim, SettleKind.HELD, record, 1, "", b"", parked_for=hook["id"])
        )
    await streams.settle(store, "w1", settled)
    assert (await pauses.held(client.store)).by_webhook == {hook["id"]: 3}
    measured = await backlog.measure(client.store)
    assert (measured.queued, measured.held) == (0, 3)
    alerts = Alerts(AlertsConfig(queued_max=3))
    alerts.observe(measured)
    assert [(a["name"], a["value"]) for a in alerts.active()] == [("queued_max", 3)]
    metrics = Metrics()
    alerts.export(metrics)
    assert metrics.gauge("dispatcher_queued_jobs") == metrics.gauge("dispatcher_paused_jobs") == 3


@pytest.mark.slow
async def test_a_pause_reaches_two_processes_within_a_second(
    api: Api, client: Client, redis_url: str, prefix: str, target: Target, tmp_path: Path
) -> None:
    """Two ``dispatcher run`` processes stop attempting a webhook within 1 s of its pause,
    keep its new events, and deliver them all once it is resumed."""
    hook = await client.create_webhook("acme", target.url("/two"))
    env = daemon_env(redis_url, prefix)
    daemons = [Daemon(env, tmp_path / f"d{i}.log").start() for i in range(2)]
    try:
        await _publish(client, "acme", 1)
        await target.wait_for(1, "/two", timeout_s=20)
        await _pause(api, hook["id"], True)
        await asyncio.sleep(1.0)  # the contract's bound: every worker follows within 1 s
        ids = await _publish(client, "acme", 20, start=1)
        await eventually(_waiting_for("paused", client, ids), what="every new job held")
        assert target.count("/two") == 1
        await _pause(api, hook["id"], False)
        got = await target.wait_for(21, "/two", timeout_s=20)
        assert sorted(orjson.loads(r.body)["n"] for r in got) == list(range(21))
    finally:
        await stop_daemons(*daemons)


async def test_a_release_puts_back_a_bounded_number_of_jobs_whatever_the_webhooks(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One release call (the tick) puts back at most RELEASE_BATCH held jobs in all, however
    many webhooks were resumed at once, so a mass resume never blocks Redis; the next calls
    drain the rest, each webhook's jobs in accepted order."""
    monkeypatch.setattr(pauses, "RELEASE_BATCH", 2)
    hooks = [await client.create_webhook("acme", f"https://h.example.com/{n}") for n in range(3)]
    for hook in hooks:
        await client.update_webhook(hook["id"], paused=True)
    await _publish(client, "acme", 3)
    store = client.store.of_webhook(hooks[0]["id"])
    assert all(client.store.of_webhook(h["id"]) is store for h in hooks)
    await streams.ensure_group(store, "default")
    claims, _ = await streams.claim_new(store, ("default",), "w1", budget=100)
    assert len(claims) == 9
    assert await streams.settle(store, "w1", [_held(c) for c in claims]) == []
    for hook in hooks:  # resumed without a release of their own (as by another process)
        raw = await store.redis.hget(store.keys.webhooks, hook["id"])
        assert raw is not None
        await store.redis.hset(
            store.keys.webhooks, hook["id"], orjson.dumps({**orjson.loads(raw), "paused": False})
        )
    counts = []
    while released := await pauses.tick(store):
        counts.append(sum(n for _, n in released))
    assert counts
    assert max(counts) <= 2
    assert sum(counts) == 9
    assert (await pauses.held(store)).jobs == 0
