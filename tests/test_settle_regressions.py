"""Regressions of the delivery hot path (issue 13): settling outcomes whatever Redis holds.

A stale outcome must never stop a worker from writing its other outcomes, and the fence must
judge each claim exactly, however many other entries this consumer has pending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import orjson

from dispatcher.model import JobState
from dispatcher.queue import codec, delays, streams
from dispatcher.queue.keys import GROUP, Keys
from dispatcher.queue.streams import Claim, SettleKind, Settlement
from tests.helpers import eventually, stream_entries
from tests.target import Reply

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import redis.asyncio as aioredis

    from dispatcher import Client
    from dispatcher.queue.store import Store
    from tests.conftest import WorkerHarness
    from tests.target import Target


async def _publish(client: Client, n: int, url: str = "https://hooks.example.com/x") -> list[str]:
    await client.create_webhook("acme", url)
    return [str((await client.publish("acme", "a.b", {"n": i}))["jobs"][0]["id"]) for i in range(n)]


async def _settlement(store: Store, claim: Claim, kind: str, reason: str = "") -> Settlement:
    """The outcome a worker would queue for ``claim`` after one attempt."""
    [job] = (await streams.load(store, [claim])).jobs
    assert job is not None
    now = store.clock.now_ms()
    job.attempt += 1
    job.state = {"D": JobState.DELIVERED, "R": JobState.SCHEDULED, "X": JobState.DEAD}[kind]
    job.reason = reason or None
    job.history.append([now, 200 if kind == "D" else 500, 1.0, None, 0])
    return Settlement(
        claim,
        SettleKind(kind),
        codec.encode(job),
        now,
        reason,
        orjson.dumps([now, 200, 1.0, None, 1]),
    )


async def _pending(redis: aioredis.Redis, key: str) -> list[dict[str, Any]]:
    reply = redis.xpending_range(key, GROUP, "-", "+", 100_000)
    return await cast("Awaitable[list[dict[str, Any]]]", reply)


# --- finding 1: a stale outcome on a job never attempted --------------------------------------


async def test_a_stale_outcome_on_a_never_attempted_job_does_not_fail_the_batch(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A job whose entry was deleted in flight (its record only a locator) makes its outcome
    stale, and the rest of the batch is still written, its dead job dead-lettered once."""
    dead_id, gone_id = await _publish(client, 2)
    claims, _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    dead_claim, gone_claim = sorted(claims, key=lambda c: c.job_id != dead_id)
    ready = Keys(prefix).ready("default")
    await redis.xdel(ready, gone_claim.sid)  # deleted outside dispatcher while a delivers it
    page = await streams.reclaim_page(
        store, "default", "b", min_idle_ms=0, cursor=gone_claim.sid, count=1
    )
    assert page.missing == [gone_claim.sid]  # and it left the PEL: a's claim is stale now
    batch = [
        await _settlement(store, dead_claim, "X", "max_attempts"),
        await _settlement(store, gone_claim, "D"),
    ]
    assert await streams.settle(store, "a", batch) == [gone_id]
    assert await streams.settle(store, "a", batch) == [dead_id, gone_id]  # a retry is harmless
    dead = await client.get_job(dead_id)
    assert dead is not None
    assert (dead["state"], dead["dead_reason"]) == ("dead", "max_attempts")
    dlq = await stream_entries(redis, Keys(prefix).dlq)
    assert [f[b"j"].decode() for _, f in dlq] == [dead_id]
    locator = await redis.hget(Keys(prefix).jobs, gone_id)  # left as it is: still a locator
    assert isinstance(locator, bytes)
    assert codec.parse_locator(locator, gone_id) == ("default", gone_claim.sid)
    found = await delays.find_orphans(store, cursor="0", count=1000)
    assert found.dead == [gone_id]  # the loss stays visible, as entry_missing


async def test_a_claim_lost_by_redis_gives_a_stale_outcome_that_writes_nothing(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """After Redis restarts having kept a publish but lost its claim, the first claim's late
    outcome is refused without error and the new owner's outcome is written."""
    [job_id] = await _publish(client, 1)
    [first], _ = await streams.wait_new(store, ("default",), "a", count=10, block_ms=10)
    ready = Keys(prefix).ready("default")
    await redis.xgroup_destroy(ready, GROUP)  # the group as it was before the claim
    await redis.xgroup_create(ready, GROUP, id="0")
    [second], _ = await streams.wait_new(store, ("default",), "b", count=10, block_ms=10)
    assert second.sid == first.sid
    assert await streams.settle(store, "a", [await _settlement(store, first, "D")]) == [job_id]
    assert await streams.settle(store, "b", [await _settlement(store, second, "D")]) == []
    job = await client.get_job(job_id)
    assert job is not None
    assert (job["state"], len(job["attempts"])) == ("delivered", 1)
    assert await _pending(redis, ready) == []


async def test_jobs_answered_200_are_not_sent_again_and_again_when_redis_lost_their_claims(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """Six jobs answered 200 whose claims Redis lost in flight (another worker then claimed
    their entries and died) hold back no other outcome, are sent once more after the stall
    timeout and delivered: never sent again and again, never dead as poison."""
    target.script("/slow", Reply(delay_s=1.5))
    ids = await _publish(client, 6, target.url("/slow"))
    await workers.start(timeout_s=2.0, stall_timeout_s=5.0, concurrency=64)
    await target.wait_for(6, "/slow")
    ready = Keys(prefix).ready("default")
    assert len(await _pending(redis, ready)) == 6, "the six attempts must still be in flight"
    async with redis.pipeline(transaction=True) as pipe:  # a failover, and a worker elsewhere
        pipe.xgroup_destroy(ready, GROUP)
        pipe.xgroup_create(ready, GROUP, id="0")
        pipe.xreadgroup(GROUP, "elsewhere", {ready: ">"}, count=100)
        await pipe.execute()
    answered = {"outcome": "delivered", "status": "2xx"}
    await eventually(
        lambda: workers.metrics.get("dispatcher_deliveries_total", **answered) == 6,
        what="the six answers, their outcomes queued to be written",
    )
    await client.create_webhook("other", target.url("/fast"))
    [fast] = (await client.publish("other", "a.b", {}))["jobs"]

    async def fast_delivered() -> bool:
        job = await client.get_job(fast["id"])
        return job is not None and job["state"] == "delivered"

    await eventually(fast_delivered, what="the later job delivered")
    lost = await _pending(redis, ready)
    assert {p["consumer"] for p in lost} == {b"elsewhere"}, "it waited for the takeover"

    async def delivered() -> bool:
        jobs = [await client.get_job(job_id) for job_id in ids]
        return all(j is not None and j["state"] == "delivered" for j in jobs)

    await eventually(delivered, timeout_s=20, what="every job delivered")
    for job_id in ids:
        job = await client.get_job(job_id)
        assert job is not None
        assert (len(job["attempts"]), job["stalls"]) == (1, 1)
    assert target.count("/slow") == 12
    assert await _pending(redis, ready) == []
    assert workers.metrics.get("dispatcher_stale_owner_rejected_total") == 6
    assert workers.metrics.get("dispatcher_redis_errors_total", loop="settle") == 0


# --- finding 2: the fence judges each claim exactly -------------------------------------------


async def test_untracked_pending_entries_never_make_a_current_claim_stale(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A 200-claim batch settles in full although the same consumer holds many pending
    entries it no longer tracks (a load that failed) between the batch's entries."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    await client.publish_many(
        [{"tenant_id": "acme", "event_type": "a.b", "payload": {"i": i}} for i in range(1200)]
    )
    claims, _ = await streams.wait_new(store, ("default",), "a", count=2000, block_ms=10)
    assert len(claims) == 1200
    tracked = claims[::6]  # the other five in six: claimed by a, then lost track of
    batch = [await _settlement(store, claim, "D") for claim in tracked]
    assert len(batch) == 200
    assert await streams.settle(store, "a", batch) == []
    delivered = [await client.get_job(c.job_id) for c in tracked]
    assert {j["state"] for j in delivered if j is not None} == {"delivered"}
    still = {p["message_id"].decode() for p in await _pending(redis, Keys(prefix).ready("default"))}
    assert still == {c.sid for c in claims} - {c.sid for c in tracked}


async def test_a_worker_with_untracked_pending_entries_sends_each_claim_once(
    client: Client,
    store: Store,
    workers: WorkerHarness,
    target: Target,
    redis: aioredis.Redis,
    prefix: str,
) -> None:
    """A worker holding many pending entries it lost track of (a load that failed) between
    200 jobs it took over sends each of those jobs once, and none of its claims is judged
    stale."""
    await client.create_webhook("acme", target.url("/hook"))
    await client.publish_many(
        [{"tenant_id": "acme", "event_type": "a.b", "payload": {"i": i}} for i in range(1200)]
    )
    ready = Keys(prefix).ready("default")
    await redis.xreadgroup(GROUP, "dead", {ready: ">"}, count=2000)  # a worker that died
    worker = await workers.start(stall_timeout_s=30.0, concurrency=256)
    sids = [p["message_id"] for p in await _pending(redis, ready)]
    taken_over, untracked = sids[::6], [s for i, s in enumerate(sids) if i % 6]
    # The worker's own claims that it no longer tracks, and the dead worker's long idle ones.
    await redis.xclaim(ready, GROUP, worker.consumer, 0, untracked, idle=0)
    await redis.xclaim(ready, GROUP, "dead", 0, taken_over, idle=3_600_000)
    # One pass takes what it reaches; the read loop takes any rest on its next turn (and may
    # race this call for some of them): 200 takeovers in all, whoever made them.
    assert await worker.reclaim("default") <= 200
    await eventually(
        lambda: workers.metrics.get("dispatcher_reclaimed_total") >= 200, what="200 takeovers"
    )
    assert workers.metrics.get("dispatcher_reclaimed_total") == 200
    await target.wait_for(200, "/hook", timeout_s=20)
    answered = {"outcome": "delivered", "status": "2xx"}
    await eventually(
        lambda: workers.metrics.get("dispatcher_deliveries_total", **answered) == 200,
        what="200 answers",
    )

    async def written() -> bool:
        return await redis.zcard(Keys(prefix).done) == 200

    await eventually(written, what="200 outcomes written")
    pending = await _pending(redis, ready)
    assert {p["message_id"] for p in pending} == set(untracked)
    assert target.count("/hook") == 200
    assert len({r.headers["webhook-id"] for r in target.received}) == 200
    assert workers.metrics.get("dispatcher_stale_owner_rejected_total") == 0


async def test_a_stale_deferral_adds_no_attempt_to_the_history(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str
) -> None:
    """A worker that defers a job another worker has meanwhile taken over leaves the job's
    history as it was (before: its stale settle appended a copy of the job's last attempt,
    marked late, that nobody made)."""
    from dispatcher.config import DeliveryConfig, JobsConfig  # noqa: PLC0415
    from dispatcher.delivery import Worker  # noqa: PLC0415
    from dispatcher.gate import Work as _Work  # noqa: PLC0415
    from dispatcher.metrics import Metrics  # noqa: PLC0415
    from dispatcher.model import Webhook  # noqa: PLC0415
    from dispatcher.sender import Sender  # noqa: PLC0415
    from dispatcher.ssrf import AddressPolicy  # noqa: PLC0415

    hook = await client.create_webhook("acme", "https://hooks.example.com/x", max_in_flight=1)
    job_id = (await client.publish("acme", "a.b", {"n": 1}))["jobs"][0]["id"]
    [claim], _ = await streams.claim_new(store, ("default",), "a", budget=1)
    [job] = (await streams.load(store, [claim])).jobs
    assert job is not None
    now_ms = store.clock.now_ms()
    attempt = [now_ms, 500, 12.0, "HTTP 500", 0]
    job.attempt, job.state = 1, JobState.SCHEDULED
    job.history.append(attempt)
    retry = Settlement(
        claim, SettleKind.RETRY, codec.encode(job), now_ms, "", orjson.dumps([*attempt[:4], 1])
    )
    assert await streams.settle(store, "a", [retry]) == []
    await delays.promote_due(store, "default")
    [claim], _ = await streams.claim_new(store, ("default",), "a", budget=1)
    [job] = (await streams.load(store, [claim])).jobs
    assert job is not None
    # Worker "a" froze; "b" takes the entry over, as reclaim does.
    await redis.xautoclaim(Keys(prefix).ready("default"), GROUP, "b", 0, "0-0")
    raw = await redis.hget(Keys(prefix).webhooks, hook["id"])
    assert isinstance(raw, bytes)
    sender = Sender(
        timeout_s=1.0,
        concurrency=1,
        policy=AddressPolicy(allow_private=True, allowed_cidrs=()),
        user_agent="dispatcher/test",
    )
    worker = Worker(store, sender, DeliveryConfig(), JobsConfig(), Metrics(), consumer="a")
    worker._wait_for_room(_Work(claim, job, Webhook.decode(raw)), "max_in_flight")
    deferral = worker._settle_queue.get_nowait()
    assert await streams.settle(store, "a", [deferral]) == [job_id]
    after = await client.get_job(job_id)
    assert after is not None
    assert len(after["attempts"]) == 1
