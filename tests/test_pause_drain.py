"""A paused webhook's backlog: held in the compact form of a queued job, and drained in the
order its publishes were accepted when the webhook is resumed (pauses.py, lua/_held.lua)."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest

from dispatcher import Client, shapes
from dispatcher.errors import Conflict
from dispatcher.model import rfc3339
from dispatcher.queue import codec, delays, pauses, streams
from dispatcher.queue.keys import GROUP
from dispatcher.queue.streams import SettleKind, Settlement
from tests.helpers import Daemon, RedisServer, daemon_env, eventually, stop_daemons

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

    from dispatcher.queue.store import Store
    from tests.conftest import WorkerHarness
    from tests.target import Target


_Entries = list[tuple[bytes, dict[bytes, bytes]]]


async def _publish(client: Client, start: int, n: int, pad: int = 0) -> list[str]:
    ids: list[str] = []
    for first in range(start, start + n, 100):
        payload: dict[str, Any] = {"note": "x" * pad} if pad else {}
        answers = await client.publish_many(
            [
                {"tenant_id": "acme", "event_type": "e", "payload": {"n": i, **payload}}
                for i in range(first, min(first + 100, start + n))
            ]
        )
        for answer in answers:
            assert isinstance(answer, dict), answer
            ids += [job["id"] for job in answer["jobs"]]
    return ids


async def _held_count(client: Client) -> int:
    return (await pauses.held(client.store)).jobs


def _numbers(target: Target, path: str) -> list[int]:
    return [orjson.loads(r.body)["n"] for r in target.received if r.path == path]


async def test_a_resumed_backlog_goes_out_in_accepted_order_past_many_batches_and_new_events(
    client: Client, workers: WorkerHarness, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed with more held jobs than a release batch, with jobs of the webhook still
    unclaimed in its stream and new events published during the drain, the target receives
    every job once, in the order their publishes were accepted."""
    monkeypatch.setattr(pauses, "RELEASE_BATCH", 40)
    monkeypatch.setattr(pauses, "DRAIN_CALLS", 1, raising=False)
    hook = await _held_then_unclaimed(client, workers, target.url("/order"), 240, 30)
    n, during = 270, []
    for _ in range(6):  # new events as the backlog goes out
        during.append(await _held_count(client) > 0)
        await _publish(client, n, 10)
        n += 10
        seen = target.count("/order")
        await target.wait_for(seen + 5, "/order", timeout_s=20)
    assert any(during), "the events were published during the drain"
    await target.wait_for(n, "/order", timeout_s=30)
    assert _numbers(target, "/order") == list(range(n))
    await eventually(lambda: _drained(client, hook["id"]), what="the drain mark dropped")


async def _is_positive(value: Awaitable[int]) -> bool:
    return await value > 0


async def _held_then_unclaimed(
    client: Client, workers: WorkerHarness, url: str, held: int, unclaimed: int
) -> shapes.WebhookWithSecret:
    """A webhook resumed with ``held`` jobs held, then ``unclaimed`` queued while it was paused
    and still in its stream (its workers stopped meanwhile, started again after)."""
    hook = await client.create_webhook("acme", url)
    await client.update_webhook(hook["id"], paused=True)
    await workers.start(concurrency=1)
    await _publish(client, 0, held)
    await eventually(lambda: _is(_held_count(client), held), what="every job held")
    await workers.stop()
    await _publish(client, held, unclaimed)
    await client.update_webhook(hook["id"], paused=False)
    await workers.start(concurrency=1)
    return hook


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _drained(client: Client, webhook_id: str) -> bool:
    store = client.store.of_webhook(webhook_id)
    raw = await store.redis.hget(store.keys.webhooks, webhook_id)
    return raw is not None and b'"draining"' not in raw


def _hold(claim: streams.Claim) -> Settlement:
    """The outcome a worker writes for a claimed job of a paused webhook (outcomes.hold)."""
    assert claim.inline is not None
    claim.inline.hold()
    record = codec.encode(claim.inline)
    return Settlement(claim, SettleKind.HELD, record, 1, "", b"", parked_for=claim.webhook_id)


async def _claim_all(store: Store, n: int) -> list[streams.Claim]:
    await streams.ensure_group(store, "default")
    claims, _ = await streams.claim_new(store, ("default",), "w1", budget=n)
    assert len(claims) == n
    return claims


async def test_a_held_job_never_attempted_costs_what_a_queued_one_costs(client: Client) -> None:
    """Held, a job never attempted keeps the queued form: a locator in the jobs hash and its
    entry (less the webhook) in the webhook's held stream, within 5% of the queued bytes."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    await client.update_webhook(hook["id"], paused=True)
    store = client.store.of_webhook(hook["id"])
    keys = store.keys
    await _publish(client, 0, 200, pad=200)  # as bench.pause_memory measures
    queued = sum(
        [
            cast("int", await store.redis.memory_usage(keys.jobs, samples=0)),
            cast("int", await store.redis.memory_usage(keys.ready("default"), samples=0)),
        ]
    )
    claims = await _claim_all(store, 200)
    assert await streams.settle(store, "w1", [_hold(c) for c in claims]) == []
    held_stream = keys.ready(f"{hook['id']}|default")
    assert await store.redis.xlen(held_stream) == 200
    assert await store.redis.zcard(keys.held(hook["id"])) == 0
    [(_sid, fields)] = cast("_Entries", await store.redis.xrange(held_stream, count=1))
    assert set(fields) == {b"j", b"t", b"e", b"p"}
    records = cast("list[bytes]", await store.redis.hvals(keys.jobs))
    assert all(codec.is_locator(r) for r in records)
    held = sum(
        [
            cast("int", await store.redis.memory_usage(keys.jobs, samples=0)),
            cast("int", await store.redis.memory_usage(held_stream, samples=0)),
        ]
    )
    assert held <= queued * 1.05, (held, queued)
    job = await client.get_job(claims[0].job_id)
    assert job is not None
    assert (job["state"], job["waiting_for"], job["attempt"]) == ("scheduled", "paused", 0)
    with pytest.raises(Conflict):  # as for any job waiting without an attempt
        await client.retry_job(claims[0].job_id)
    assert (await pauses.held(client.store)).by_webhook == {hook["id"]: 200}


async def test_holds_settled_out_of_order_by_two_workers_keep_the_accepted_order(
    client: Client,
) -> None:
    """Held jobs settled later than newer ones (another worker settled first) still sit in
    accepted order in the held stream, each readable through its locator, and the orphan
    sweep finds their entries."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    await client.update_webhook(hook["id"], paused=True)
    store = client.store.of_webhook(hook["id"])
    await _publish(client, 0, 6)
    claims = await _claim_all(store, 6)
    for part in (claims[4:], claims[1:2], claims[2:4], claims[:1]):
        assert await streams.settle(store, "w1", [_hold(c) for c in part]) == []
    held = cast("_Entries", await store.redis.xrange(store.keys.ready(f"{hook['id']}|default")))
    assert [fields[b"j"].decode() for _, fields in held] == [c.job_id for c in claims]
    assert [sid.decode() for sid, _ in held] == [c.sid for c in claims]
    jobs = [await client.get_job(c.job_id) for c in claims]
    assert [j["waiting_for"] if j else None for j in jobs] == ["paused"] * 6
    swept = await delays.find_orphans(store, cursor="0", count=100)  # entries found: kept
    assert (swept.requeued, swept.dead) == ([], [])


async def test_jobs_held_by_the_release_before_are_released_in_order_with_the_new_form(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Jobs held in the previous release's form (a record and a held zset member) and jobs
    held in the compact form go back together when resumed, in accepted order."""
    hook = await client.create_webhook("acme", target.url("/upgrade"))
    await client.update_webhook(hook["id"], paused=True)
    store = client.store.of_webhook(hook["id"])
    keys = store.keys
    await _publish(client, 0, 6)
    claims = await _claim_all(store, 6)
    old, new = claims[::2], claims[1::2]
    assert await streams.settle(store, "w1", [_hold(c) for c in new]) == []
    for claim in old:  # as the release before wrote a held job
        held = _hold(claim)
        pipe = store.redis.pipeline(transaction=True)
        pipe.hset(keys.jobs, claim.job_id, held.record)
        pipe.zadd(keys.held(hook["id"]), {claim.job_id: _accepted(claim)})
        pipe.sadd(keys.holders, hook["id"])
        pipe.xack(keys.ready("default"), GROUP, claim.sid)
        pipe.xdel(keys.ready("default"), claim.sid)
        await pipe.execute()
    assert await _held_count(client) == 6
    await workers.start(concurrency=1)
    await client.update_webhook(hook["id"], paused=False)
    await target.wait_for(6, "/upgrade")
    assert _numbers(target, "/upgrade") == list(range(6))
    assert await _held_count(client) == 0


def _accepted(claim: streams.Claim) -> int:
    ms, _, seq = claim.sid.partition("-")
    return int(ms) * 1000 + min(int(seq), 999)


async def test_a_held_fifo_job_whose_record_is_unreadable_lets_its_lane_go_on(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A held job of a FIFO lane whose record cannot be put back is dead-lettered as
    malformed, and the lane's next job is delivered rather than stuck behind it."""
    hook = await client.create_webhook("acme", target.url("/lane"), ordering="fifo")
    await client.update_webhook(hook["id"], paused=True)
    store = client.store.of_webhook(hook["id"])
    await workers.start()
    ids = await _publish(client, 0, 2)
    await eventually(lambda: _is(_held_count(client), 1), what="the lane's head held")
    raw = cast("bytes | None", await store.redis.hget(store.keys.jobs, ids[0]))
    assert raw is not None
    assert b'"ol":' in raw
    meta, _, rest = raw.partition(b"\n")
    broken = {**orjson.loads(meta), "q": 7}  # no stream to put it back in
    await store.redis.hset(store.keys.jobs, ids[0], orjson.dumps(broken) + b"\n" + rest)
    await client.update_webhook(hook["id"], paused=False)
    await target.wait_for(1, "/lane")
    assert _numbers(target, "/lane") == [1]
    entries = cast("_Entries", await store.redis.xrange(store.keys.dlq))
    assert [e[1][b"r"] for e in entries] == [b"malformed"]


@pytest.mark.slow
async def test_held_jobs_survive_a_worker_sigkill_and_a_redis_restart(
    tmp_path: Path, target: Target, logs_dir: Path
) -> None:
    """Held jobs stay held through a SIGKILLed ``dispatcher run`` and a Redis restart on its
    append-only file, and all are delivered once the webhook is resumed."""
    server = RedisServer(tmp_path / "aof", appendonly=True)
    server.start()
    env = daemon_env(server.url, "held", delivery_timeout_s="2", delivery_stall_timeout_s="3")
    daemons = [Daemon(env, logs_dir / "victim.log").start()]
    try:
        async with Client.from_url(server.url, prefix="held") as client:
            hook = await client.create_webhook("acme", target.url("/kept"))
            await client.update_webhook(hook["id"], paused=True)
            ids = await _publish(client, 0, 20)
            await eventually(lambda: _is(_held_count(client), 20), timeout_s=20)
            daemons[0].kill()
            server.stop(signal.SIGTERM)
            server.start()
            assert await _held_count(client) == 20
            job = await client.get_job(ids[0])
            assert job is not None
            assert job["waiting_for"] == "paused"
            daemons.append(Daemon(env, logs_dir / "after.log").start())
            await client.update_webhook(hook["id"], paused=False)
            await target.wait_for(20, "/kept", timeout_s=30)
            assert sorted(_numbers(target, "/kept")) == list(range(20))
    finally:
        await stop_daemons(*daemons)
        server.stop()


async def test_a_backlog_released_whole_by_the_resume_still_goes_out_before_unclaimed_jobs(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Resumed with fewer held jobs than a release batch (all put back by one release call)
    and newer jobs still unclaimed in the webhook's stream, the target receives every job
    once, in the order their publishes were accepted."""
    await _held_then_unclaimed(client, workers, target.url("/whole"), 20, 30)
    await target.wait_for(50, "/whole", timeout_s=30)
    assert _numbers(target, "/whole") == list(range(50))


async def test_a_resumed_webhook_published_to_steadily_stops_draining(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Events published to a resumed webhook without pause, each delivered before the next,
    do not keep it draining: its mark goes, and every job is delivered once, in order."""
    hook = await client.create_webhook("acme", target.url("/steady"))
    await client.update_webhook(hook["id"], paused=True)
    await workers.start(concurrency=1)
    await _publish(client, 0, 20)
    await eventually(lambda: _is(_held_count(client), 20), what="every job held")
    await client.update_webhook(hook["id"], paused=False)
    sent = 20

    async def one_more_then_drained() -> bool:
        nonlocal sent
        await _publish(client, sent, 1)
        sent += 1
        await target.wait_for(sent, "/steady", timeout_s=10)
        return await _drained(client, hook["id"])

    await eventually(one_more_then_drained, timeout_s=20, what="the drain mark dropped")
    assert _numbers(target, "/steady") == list(range(sent))


async def test_a_held_job_keeps_its_created_at_through_the_resume_and_its_delivery(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A job held in the compact form and put back by a resume still says when its publish
    was accepted (``created_at``), queued again and once delivered, not when it was put back."""
    hook = await client.create_webhook("acme", target.url("/created"))
    await client.update_webhook(hook["id"], paused=True)
    await workers.start(concurrency=1)
    [job_id] = await _publish(client, 0, 1)
    await eventually(lambda: _is(_held_count(client), 1), what="the job held")
    await workers.stop()
    created = await _created(client, job_id)
    await eventually(lambda: _later_than(client, created), what="a later second")
    await client.update_webhook(hook["id"], paused=False)
    assert await _created(client, job_id) == created
    await workers.start(concurrency=1)
    await target.wait_for(1, "/created")
    await eventually(lambda: _is(_state(client, job_id), "delivered"), what="delivered")
    assert await _created(client, job_id) == created


async def _later_than(client: Client, created_at: str) -> bool:
    clock = await client.store.refresh_clock()
    return str(rfc3339(clock.now_ms())) > created_at


async def _created(client: Client, job_id: str) -> str:
    job = await client.get_job(job_id)
    assert job is not None
    return str(job["created_at"])


async def _state(client: Client, job_id: str) -> str:
    job = await client.get_job(job_id)
    assert job is not None
    return job["state"]


async def test_pause_and_resume_flapping_under_publishes_delivers_each_job_once_in_order(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Paused and resumed again and again while jobs are published and delivered, the webhook
    ends resumed with nothing held, no drain mark, and every job delivered once, in order."""
    hook = await client.create_webhook("acme", target.url("/flap"))
    await workers.start(concurrency=1)
    n = 0
    for round_ in range(8):
        pause = round_ % 2 == 0
        if not pause:  # resumed with jobs held (a resume finding none ends the drain at once)
            await eventually(lambda: _is_positive(_held_count(client)), what="jobs held")
        await client.update_webhook(hook["id"], paused=pause)
        await _publish(client, n, 25)
        n += 25
    await client.update_webhook(hook["id"], paused=False)
    await target.wait_for(n, "/flap", timeout_s=30)
    await eventually(lambda: _drained(client, hook["id"]), what="the drain mark dropped")
    assert await _held_count(client) == 0
    assert _numbers(target, "/flap") == list(range(n))
