"""End to end through a real Redis and a real HTTP target, with an in-process worker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from dispatcher import Client, InvalidField, PayloadTooLarge, shapes, upkeep
from dispatcher.ids import new_event_ids
from dispatcher.queue import delays
from dispatcher.queue.keys import Keys
from dispatcher.queue.store import Store
from tests.helpers import StreamEntries, eventually, hash_len, stream_entries
from tests.target import Drip, Garbage, Hang, Huge, Redirect, Reply, Reset, Target

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from tests.conftest import WorkerHarness
    from tests.target import Behaviour


async def _job_in(client: Client, job_id: str, *states: str) -> shapes.Job | None:
    job = await client.get_job(job_id)
    return job if job is not None and job["state"] in states else None


def _ms(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp() * 1000


async def test_published_event_arrives_signed(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """A published event arrives once, signed so that a Standard Webhooks verifier accepts it."""
    hook = await client.create_webhook("acme", target.url(), ["order.created"])
    answer = await client.publish("acme", "order.created", {"order": 42, "total": 9.99})
    assert [j["webhook_id"] for j in answer["jobs"]] == [hook["id"]]
    await workers.start()
    [req] = await target.wait_for(1)
    assert orjson.loads(req.body) == {"order": 42, "total": 9.99}
    assert req.headers["webhook-id"] == answer["jobs"][0]["id"]
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("dispatcher/")
    Verifier(hook["secret"]).verify(req.body, dict(req.headers))
    job = await eventually(lambda: _job_in(client, answer["jobs"][0]["id"], "delivered"))
    assert job["attempt"] == 1
    assert job["attempts"][0]["status"] == 200
    assert job["finished_at"] is not None
    assert job["created_at"] <= job["processed_at"] <= job["finished_at"]


async def test_fan_out_follows_subscriptions(client: Client, target: Target) -> None:
    """Publishing makes one job per enabled tenant webhook subscribed to the type, '*' included."""
    orders = await client.create_webhook("acme", target.url("/orders"), ["order.created"])
    everything = await client.create_webhook("acme", target.url("/all"), ["*"])
    await client.create_webhook("acme", target.url("/users"), ["user.created"])
    off = await client.create_webhook("acme", target.url("/off"), ["*"])
    await client.update_webhook(off["id"], enabled=False)
    await client.create_webhook("globex", target.url("/other"), ["*"])
    answer = await client.publish("acme", "order.created", {"n": 1})
    assert sorted(j["webhook_id"] for j in answer["jobs"]) == sorted(
        [orders["id"], everything["id"]]
    )
    assert len({j["id"] for j in answer["jobs"]}) == 2
    for job in answer["jobs"]:
        stored = await client.get_job(job["id"])
        assert stored is not None
        assert stored["state"] == "queued"
        assert stored["event_id"] == answer["event_id"]
    assert (await client.publish("nobody", "order.created", {}))["jobs"] == []


async def test_retry_escalation_follows_backoff(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """Failed attempts are retried after base*2^(n-1) (±20%) until one succeeds."""
    target.script("/hook", Reply(500), Reply(503), Reply(500), Reply(200))
    await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await workers.start(backoff_base_s=0.2, backoff_cap_s=10, max_attempts=5)
    job = await eventually(lambda: _job_in(client, job_id, "delivered"), timeout_s=15)
    assert [a["status"] for a in job["attempts"]] == [500, 503, 500, 200]
    starts = [_ms(a["at"]) for a in job["attempts"]]
    for n in (1, 2, 3):
        gap_ms = starts[n] - starts[n - 1]
        planned_ms = 200 * 2 ** (n - 1)
        assert gap_ms >= planned_ms * 0.8, (n, gap_ms)
    received = await target.wait_for(4)
    assert len({r.headers["webhook-id"] for r in received}) == 1


async def test_a_retry_is_promoted_when_due_not_at_the_next_interval(
    client: Client, target: Target, workers: WorkerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker promotes the retries it scheduled as they fall due: with the periodic promote
    pass 60 s apart, a job retried after 0.2 s is still delivered within seconds."""
    monkeypatch.setattr(upkeep, "PROMOTE_INTERVAL_S", 60.0)
    target.script("/hook", Reply(500), Reply(500), Reply(200))
    await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await workers.start(backoff_base_s=0.2, backoff_cap_s=0.2, max_attempts=5)
    job = await eventually(lambda: _job_in(client, job_id, "delivered"), timeout_s=20)
    assert [a["status"] for a in job["attempts"]] == [500, 500, 200]


async def test_every_job_put_back_is_promoted_when_due(
    client: Client, target: Target, workers: WorkerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each job a worker puts back is promoted as it falls due, with the periodic pass 60 s
    apart: one put back before the first pass ended, and two due within one interval."""
    monkeypatch.setattr(upkeep, "PROMOTE_INTERVAL_S", 60.0)
    await client.create_webhook("acme", target.url())
    now_ms = client.store.clock.now_ms()
    due = [now_ms + 300, now_ms + 600, now_ms + 900]
    ids = []
    for due_ms in due:
        when = datetime.fromtimestamp(due_ms / 1000, UTC)
        ids.append((await client.publish("acme", "a.b", {}, deliver_at=when))["jobs"][0]["id"])
    worker = await workers.start()
    worker.upkeep.due(due[0])  # before the first promote pass has even run
    await eventually(lambda: _job_in(client, ids[0], "delivered"), timeout_s=20)
    worker.upkeep.due(due[1])
    worker.upkeep.due(due[2])  # later than the next pass the first call asks for
    for job_id in ids[1:]:
        await eventually(lambda job_id=job_id: _job_in(client, job_id, "delivered"), timeout_s=20)


async def test_exhausted_job_is_dead_lettered_with_last_error(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target, workers: WorkerHarness
) -> None:
    """After max_attempts failures the job is dead, in the DLQ, with its last error and status."""
    target.script("/hook", Reply(500, body=b"database on fire"))
    await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await workers.start(max_attempts=3)
    job = await eventually(lambda: _job_in(client, job_id, "dead"))
    assert job["attempt"] == 3
    assert job["last_status"] == 500
    assert "database on fire" in job["last_error"]
    assert job["dead_reason"] == "max_attempts"
    assert job["next_attempt_at"] is None
    entries = await stream_entries(redis, Keys(prefix).dlq)
    assert [e[1][b"j"].decode() for e in entries] == [job_id]
    assert entries[0][1][b"r"] == b"max_attempts"
    assert target.count() == 3


async def test_replayed_dead_job_is_delivered(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target, workers: WorkerHarness
) -> None:
    """A dead job replayed from the DLQ goes back to the queue and is delivered, history kept."""
    target.script("/hook", Reply(500), Reply(500), Reply(200))
    await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {"x": 1}))["jobs"][0]["id"]
    await workers.start(max_attempts=2)
    await eventually(lambda: _job_in(client, job_id, "dead"))
    assert (await client.replay([job_id, "job_nonsense"]))["replayed"] == 1
    job = await eventually(lambda: _job_in(client, job_id, "delivered"))
    assert [a["status"] for a in job["attempts"]] == [500, 500, 200]
    assert job["attempt"] == 1  # attempts reset on replay
    assert await redis.xlen(Keys(prefix).dlq) == 0
    assert await client.replay([job_id]) == {  # delivered jobs are not replayed
        "replayed": 0,
        "not_found": [],
        "not_dead": [job_id],
    }


async def test_gone_disables_webhook_and_dead_letters(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """A 410 disables the webhook and dead-letters the job; later events make no job for it."""
    target.script("/hook", Reply(410, body=b"unsubscribed"))
    hook = await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await workers.start()
    job = await eventually(lambda: _job_in(client, job_id, "dead"))
    assert job["dead_reason"] == "gone"
    assert job["last_status"] == 410
    updated = await eventually(lambda: _disabled(client, hook["id"]), what="webhook disabled")
    assert "410" in updated["disabled_reason"]
    assert (await client.publish("acme", "a.b", {}))["jobs"] == []
    assert target.count() == 1


async def _disabled(client: Client, webhook_id: str) -> shapes.Webhook | None:
    hook = await client.get_webhook(webhook_id)
    return hook if not hook["enabled"] else None


async def test_retry_after_is_honoured(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """A 429 with Retry-After schedules the next attempt no sooner than it asks."""
    target.script("/hook", Reply(429, headers={"Retry-After": "2"}), Reply(200))
    await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await workers.start(backoff_base_s=0.05, backoff_cap_s=30)
    scheduled = await eventually(lambda: _job_in(client, job_id, "scheduled"))
    first = _ms(scheduled["attempts"][0]["at"])
    assert _ms(scheduled["next_attempt_at"]) - first >= 2000
    job = await eventually(lambda: _job_in(client, job_id, "delivered"), timeout_s=10)
    assert _ms(job["attempts"][1]["at"]) - first >= 2000


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (Hang(), "timed out"),
        (Drip(interval_s=0.1), "timed out"),
        (Reset(), ""),
        (Garbage(), ""),
        (Redirect("http://127.0.0.1:9/elsewhere"), "redirect"),
        (Reply(500, body=b"x" * 200_000), "HTTP 500"),
    ],
    ids=["hang", "drip", "reset", "garbage", "redirect", "huge-error-body"],
)
async def test_bad_targets_fail_cleanly(
    client: Client, target: Target, workers: WorkerHarness, behaviour: Behaviour, expected: str
) -> None:
    """A target that hangs, drips, resets, sends garbage or redirects fails with a clear error."""
    target.script("/hook", behaviour, Reply(200))
    await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await workers.start(timeout_s=0.5, stall_timeout_s=2, backoff_base_s=0.05)
    job = await eventually(lambda: _job_in(client, job_id, "delivered"), timeout_s=10)
    first = job["attempts"][0]
    assert first["status"] in (None, 302, 500)
    assert first["error"]
    assert expected.lower() in first["error"].lower()
    assert first["duration_ms"] < 5000
    assert len(first["error"]) < 1000


async def test_huge_success_body_is_read_bounded(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """A 2xx with an endless-looking body counts as delivered without reading it all."""
    target.script("/hook", Huge(size=200 * 1024 * 1024))
    await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await workers.start(timeout_s=5, stall_timeout_s=6)
    job = await eventually(lambda: _job_in(client, job_id, "delivered"), timeout_s=10)
    assert job["attempts"][0]["duration_ms"] < 4000


async def test_private_target_refused_by_default(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """A loopback webhook is refused at delivery time unless private targets are allowed."""
    await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await workers.start(allow_private=False, max_attempts=1)
    job = await eventually(lambda: _job_in(client, job_id, "dead"))
    assert "127.0.0.1" in job["last_error"]
    assert "loopback" in job["last_error"]
    assert target.connections == 0


async def test_malformed_entry_is_quarantined_and_work_goes_on(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target, workers: WorkerHarness
) -> None:
    """An entry put straight into the stream goes to the DLQ as malformed; good jobs still flow."""
    keys = Keys(prefix)
    await client.create_webhook("acme", target.url())
    await workers.start()
    await redis.xadd(keys.ready("default"), {"garbage": "yes"})
    await redis.xadd(keys.ready("default"), {"j": "job_missingrecord000000.1", "w": "wh_x"})
    job_id = (await client.publish("acme", "a.b", {"fine": True}))["jobs"][0]["id"]
    await eventually(lambda: _job_in(client, job_id, "delivered"))
    entries = await eventually(lambda: _dlq_with(redis, keys, 2))
    assert {e[1][b"r"] for e in entries} == {b"malformed"}
    assert any(b"garbage" in e[1][b"raw"] for e in entries)
    assert await redis.xlen(keys.ready("default")) == 0
    assert (await redis.xpending(keys.ready("default"), "dispatch"))["pending"] == 0


async def _dlq_with(redis: aioredis.Redis, keys: Keys, n: int) -> StreamEntries | None:
    entries = await stream_entries(redis, keys.dlq)
    return entries if len(entries) >= n else None


async def test_idempotency_key_answers_first_result(client: Client, target: Target) -> None:
    """The same idempotency key for a tenant answers the first result and enqueues nothing more."""
    await client.create_webhook("acme", target.url())
    new, first = await client.publish_checked("acme", "a.b", {"n": 1}, idempotency_key="k1")
    again, second = await client.publish_checked("acme", "a.b", {"n": 1}, idempotency_key="k1")
    assert (new, again) == (True, False)
    assert first == second
    other = await client.publish("globex", "a.b", {"n": 1}, idempotency_key="k1")
    assert other["event_id"] != first["event_id"]


async def test_scheduled_delivery_waits_for_its_time(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """An event with deliver_at is scheduled, then delivered once that time has come."""
    await client.create_webhook("acme", target.url())
    when = datetime.now(UTC) + timedelta(seconds=1.5)
    job_id = (await client.publish("acme", "a.b", {}, deliver_at=when))["jobs"][0]["id"]
    job = await client.get_job(job_id)
    assert job is not None
    assert job["state"] == "scheduled"
    await workers.start()
    [req] = await target.wait_for(1, timeout_s=10)
    delivered = await eventually(lambda: _job_in(client, job_id, "delivered"))
    assert _ms(delivered["attempts"][0]["at"]) >= when.timestamp() * 1000 - 50
    assert req.headers["webhook-id"] == job_id


async def test_in_flight_job_reads_as_active(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """While its request is in flight a job reads as active with a processed_at time."""
    target.script("/hook", Reply(200, delay_s=1.0))
    await client.create_webhook("acme", target.url())
    job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await workers.start()
    active = await eventually(lambda: _job_in(client, job_id, "active"))
    assert active["processed_at"] is not None
    await eventually(lambda: _job_in(client, job_id, "delivered"))


async def test_unknown_or_malformed_job_id_is_none(client: Client) -> None:
    """get_job answers None for ids that are unknown or not job ids at all."""
    assert await client.get_job("job_00000000000000000000.1") is None
    assert await client.get_job("../../etc/passwd") is None
    assert await client.get_job("") is None


async def test_bad_input_is_refused_and_changes_nothing(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target
) -> None:
    """Bad webhook fields and oversized payloads raise errors naming the field, writing nothing."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"event_types": []}, "event_types"),
        ({"event_types": [""]}, "event_types"),
        ({"secret": "nope"}, "secret"),
        ({"colour": "blue"}, "colour"),
        ({"headers": {"webhook-id": "x"}}, "headers"),
    ]
    for fields, field in cases:
        args = {"url": target.url(), **fields}
        with pytest.raises(InvalidField) as caught:
            await client.create_webhook("acme", **args)
        assert caught.value.field == field
        assert caught.value.code == "invalid_field"
    with pytest.raises(InvalidField):
        await client.create_webhook("", target.url())
    assert [k async for k in redis.scan_iter(f"{prefix}:*")] == []
    await client.create_webhook("acme", target.url())
    before = sorted([k async for k in redis.scan_iter(f"{prefix}:*")])
    with pytest.raises(PayloadTooLarge):
        await client.publish("acme", "a.b", {"blob": "x" * 300_000})
    with pytest.raises(InvalidField) as caught:
        await client.publish("acme", " ", {})
    assert caught.value.field == "event_type"
    with pytest.raises(InvalidField):
        await client.publish("acme", "a.b", {1, 2})
    with pytest.raises(InvalidField):
        await client.publish("acme", "a.b", {}, priority="urgent")
    assert sorted([k async for k in redis.scan_iter(f"{prefix}:*")]) == before


async def test_publish_is_all_or_nothing(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target
) -> None:
    """If a write of the fan-out fails, no job of the event is left behind."""
    keys = Keys(prefix)
    for path in ("/a", "/b", "/c"):
        await client.create_webhook("acme", target.url(path))
    await redis.set(keys.jobs, "not a hash")  # the records' hash is clobbered
    with pytest.raises(Exception, match="WRONGTYPE"):
        await client.publish("acme", "a.b", {})
    assert await redis.xlen(keys.ready("default")) == 0


async def test_delivered_stream_is_emptied_and_records_expire(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target, workers: WorkerHarness
) -> None:
    """Finished entries leave the stream at once, and finished records go after their retention."""
    keys = Keys(prefix)
    await client.create_webhook("acme", target.url())
    ids = [(await client.publish("acme", "a.b", {"i": i}))["jobs"][0]["id"] for i in range(20)]
    await workers.start()
    await target.wait_for(20)
    await eventually(lambda: _all_delivered(client, ids))
    assert await redis.xlen(keys.ready("default")) == 0
    assert (await redis.xpending(keys.ready("default"), "dispatch"))["pending"] == 0
    store = workers.workers[0][2]
    assert isinstance(store, Store)
    removed = await delays.sweep_finished(store, cutoff_ms=store.clock.now_ms() + 1000)
    assert removed == 20
    assert await client.get_job(ids[0]) is None
    assert await hash_len(redis, keys.jobs) == 0
    assert await redis.zcard(keys.done) == 0


async def _all_delivered(client: Client, ids: list[str]) -> bool:
    jobs = await asyncio.gather(*(client.get_job(i) for i in ids))
    return all(j is not None and j["state"] == "delivered" for j in jobs)


async def test_unacknowledged_entries_are_never_trimmed(
    client: Client, redis: aioredis.Redis, prefix: str, workers: WorkerHarness, target: Target
) -> None:
    """Entries still in flight stay in the stream and the PEL while finished ones are removed."""
    # `target` after `workers`: it closes first, ending the hung requests, so the workers stop
    # at once instead of draining them until the 5 s timeout.
    keys = Keys(prefix)
    target.script("/slow", Hang())
    await client.create_webhook("acme", target.url("/fast"), ["fast"])
    await client.create_webhook("acme", target.url("/slow"), ["slow"])
    for _ in range(3):
        await client.publish("acme", "slow", {})
    for _ in range(30):
        await client.publish("acme", "fast", {})
    await workers.start(timeout_s=5, stall_timeout_s=30)
    await target.wait_for(30, "/fast")
    await target.wait_for(3, "/slow")
    await eventually(lambda: _stream_len(redis, keys, 3))
    pending = await redis.xpending(keys.ready("default"), "dispatch")
    assert pending["pending"] == 3


async def _stream_len(redis: aioredis.Redis, keys: Keys, n: int) -> bool:
    return bool(await redis.xlen(keys.ready("default")) == n)


async def test_group_is_recreated_after_redis_loses_it(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target, workers: WorkerHarness
) -> None:
    """If stream and group vanish (Redis restarted empty), the worker recreates them and goes on."""
    keys = Keys(prefix)
    await client.create_webhook("acme", target.url())
    await workers.start()
    await client.publish("acme", "a.b", {"n": 1})
    await target.wait_for(1)
    await redis.delete(keys.ready("default"))
    await asyncio.sleep(0.3)
    job_id = (await client.publish("acme", "a.b", {"n": 2}))["jobs"][0]["id"]
    await eventually(lambda: _job_in(client, job_id, "delivered"), timeout_s=15)
    assert workers.metrics.get("dispatcher_nogroup_recoveries_total") >= 1


async def test_publish_many_in_one_round_trip(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target, workers: WorkerHarness
) -> None:
    """publish_many answers each event in order, and bad input anywhere enqueues nothing."""
    keys = Keys(prefix)
    await client.create_webhook("acme", target.url(), ["a.b"])
    await client.create_webhook("globex", target.url("/g"), ["*"])
    with pytest.raises(InvalidField):
        await client.publish_many(
            [
                {"tenant_id": "acme", "event_type": "a.b", "payload": {}},
                {"tenant_id": "acme", "event_type": "", "payload": {}},
            ]
        )
    with pytest.raises(InvalidField):
        await client.publish_many([{"tenant_id": "acme", "event_type": "a.b", "colour": 1}])
    assert await redis.exists(keys.ready("default")) == 0
    answers = await client.publish_many(
        [
            {"tenant_id": "acme", "event_type": "a.b", "payload": {"n": 1}},
            {"tenant_id": "acme", "event_type": "other", "payload": {"n": 2}},
            {"tenant_id": "globex", "event_type": "x", "payload": {"n": 3}, "idempotency_key": "k"},
        ]
    )
    assert [len(a["jobs"]) for a in answers if isinstance(a, dict)] == [1, 0, 1]
    again = await client.publish("globex", "x", {"n": 3}, idempotency_key="k")
    assert isinstance(answers[2], dict)
    assert again == answers[2]
    await workers.start()
    received = await target.wait_for(2)
    assert sorted(orjson.loads(r.body)["n"] for r in received) == [1, 3]


async def test_jobs_queued_in_the_earlier_format_are_looked_up_and_delivered(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target, workers: WorkerHarness
) -> None:
    """A backlog an earlier release queued (locators "@<stream> <entry id>") is looked up and
    delivered by this one, beside jobs queued in the short form."""
    keys = Keys(prefix)
    hook = await client.create_webhook("acme", target.url())
    old = {}
    for stream in ("default", "default:high"):
        job_id = new_event_ids()[1] + "1"
        fields = {"j": job_id, "w": hook["id"], "t": "acme", "e": "a.b", "p": f'{{"s":"{stream}"}}'}
        sid = await redis.xadd(keys.ready(stream), fields)  # type: ignore[arg-type]
        assert isinstance(sid, bytes)
        await redis.hset(keys.jobs, job_id, f"@{stream} {sid.decode()}")
        old[job_id] = stream
    new = await client.publish("acme", "a.b", {"s": "new"}, priority="low")
    new_id = new["jobs"][0]["id"]
    locator = await redis.hget(keys.jobs, new_id)
    assert isinstance(locator, bytes)
    assert locator.endswith(b",default:low")
    for job_id, stream in [*old.items(), (new_id, "default:low")]:
        job = await client.get_job(job_id)
        assert job is not None
        assert (job["state"], job["webhook_id"], job["priority"]) == (
            "queued",
            hook["id"],
            stream.partition(":")[2] or "normal",
        )
    await workers.start()
    bodies = sorted(orjson.loads(r.body)["s"] for r in await target.wait_for(3))
    assert bodies == ["default", "default:high", "new"]
    for job_id in [*old, new_id]:
        await eventually(lambda job_id=job_id: _job_in(client, job_id, "delivered"))


async def test_a_deliver_at_before_1970_is_due_at_once(client: Client, target: Target) -> None:
    """A deliver_at in the past, even before 1970 (a negative epoch time), queues the job now."""
    await client.create_webhook("acme", target.url())
    answer = await client.publish("acme", "a.b", {}, deliver_at="0775-04-12T19:23:18.4Z")
    job = await client.get_job(answer["jobs"][0]["id"])
    assert job is not None
    assert job["state"] == "queued"
