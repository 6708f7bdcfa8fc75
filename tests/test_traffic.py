"""Traffic control: queues, priorities, the adaptive per-endpoint cap, rate limits, in-flight
caps and circuit breakers, against a real Redis and a real HTTP target."""

from __future__ import annotations

import asyncio
import statistics
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest

from dispatcher.model import Webhook
from dispatcher.queue import admission, codec, streams
from dispatcher.queue.admission import Admission
from dispatcher.queue.keys import GROUP, Keys, streams_of
from dispatcher.queue.streams import SettleKind, Settlement
from dispatcher.traffic import START_FRACTION
from tests.helpers import Daemon, daemon_env, eventually, stop_daemons, stream_entries
from tests.target import Hang, Reply

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from tests.conftest import WorkerHarness
    from tests.target import Target


async def _jobs(client: Client, ids: list[str]) -> list[shapes.Job]:
    jobs = await asyncio.gather(*(client.get_job(i) for i in ids))
    assert all(job is not None for job in jobs)
    return [job for job in jobs if job is not None]


async def _publish(client: Client, tenant: str, n: int, **kwargs: Any) -> list[str]:
    ids = []
    for i in range(n):
        answer = await client.publish(tenant, "order.created", {"n": i}, **kwargs)
        ids += [job["id"] for job in answer["jobs"]]
    return ids


# --- queues and priorities -------------------------------------------------------------------


async def test_a_process_serves_only_its_queues(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A webhook on queue "slow" is served by processes that serve "slow", and only by them."""
    await client.create_webhook("fast-co", target.url("/fast"))
    await client.create_webhook("slow-co", target.url("/slow"), queue="slow")
    fast_ids = await _publish(client, "fast-co", 3)
    slow_ids = await _publish(client, "slow-co", 3)

    await workers.start(queues=("slow",))
    await eventually(lambda: _all_in_state(client, slow_ids, "delivered"), what="slow delivered")
    assert {j["queue"] for j in await _jobs(client, slow_ids)} == {"slow"}
    assert {j["state"] for j in await _jobs(client, fast_ids)} == {"queued"}
    assert target.count("/fast") == 0

    await workers.start(queues=("default",))
    await target.wait_for(3, "/fast")


async def test_a_worker_started_on_a_paused_queue_sends_nothing(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A worker that starts while its queue is paused claims nothing from it until resumed."""
    await client.create_webhook("acme", target.url("/paused"))
    await client.pause("default")
    ids = await _publish(client, "acme", 5)
    await workers.start()
    await eventually(lambda: _signed_in(client), what="the worker's first heartbeat")
    await asyncio.sleep(1.0)  # two read blocks: time enough to claim, were it allowed to
    assert target.count("/paused") == 0
    assert {j["state"] for j in await _jobs(client, ids)} == {"queued"}
    await client.resume("default")
    await eventually(lambda: _all_in_state(client, ids, "delivered"), what="delivered on resume")


async def _signed_in(client: Client) -> bool:
    return bool((await client.status())["workers"])


@pytest.mark.slow
async def test_run_queues_flag_chooses_the_queues(
    redis_url: str, prefix: str, client: Client, target: Target, tmp_path: Path
) -> None:
    """``dispatcher run --queues slow`` serves the slow queue only; a bad name exits 2."""
    await client.create_webhook("fast-co", target.url("/fast"))
    await client.create_webhook("slow-co", target.url("/slow"), queue="slow")
    fast_ids = await _publish(client, "fast-co", 2)
    slow_ids = await _publish(client, "slow-co", 2)
    env = daemon_env(redis_url, prefix)
    bad = Daemon(env, tmp_path / "bad.log", args=("--queues", "slow,Fast")).start()
    assert bad.wait() == 2
    assert '--queues: "Fast": a queue name is 1-64 of a-z' in bad.log
    daemon = Daemon(env, tmp_path / "d.log", args=("--queues", "slow")).start()
    try:
        await eventually(
            lambda: _all_in_state(client, slow_ids, "delivered"), timeout_s=15, what="slow done"
        )
        assert {j["state"] for j in await _jobs(client, fast_ids)} == {"queued"}
    finally:
        await stop_daemons(daemon)


async def test_high_priority_goes_first_and_low_is_not_starved(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """With a backlog of all three priorities, high is delivered first on the whole, normal
    next, and low still gets some deliveries before high runs out."""
    await client.create_webhook("acme", target.url("/p"))
    priority_of: dict[str, str] = {}
    for priority in ("low", "normal", "high"):  # published in the worst order for high
        for job_id in await _publish(client, "acme", 60, priority=priority):
            priority_of[job_id] = priority
    jobs = await _jobs(client, list(priority_of))
    assert {j["id"]: j["priority"] for j in jobs} == priority_of

    await workers.start(concurrency=4)
    got = await target.wait_for(180, "/p", timeout_s=30)
    order = [priority_of[r.headers["webhook-id"]] for r in got]
    rank = {
        p: statistics.mean(i for i, q in enumerate(order) if q == p) for p in priority_of.values()
    }
    assert rank["high"] < rank["normal"] < rank["low"], rank
    last_high = max(i for i, p in enumerate(order) if p == "high")
    assert "low" in order[:last_high], "low priority starved while high had a backlog"


async def test_an_unreadable_job_on_a_priority_stream_is_quarantined_from_that_stream(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """A claimed entry of the high stream whose record is gone goes to the DLQ as malformed
    and leaves that stream's pending list, while a normal job beside it is delivered."""
    keys = Keys(prefix)
    await client.create_webhook("acme", target.url("/p"))
    await redis.xadd(keys.ready("default:high"), {"j": f"job_{'0' * 20}.1", "w": "wh_gone"})
    [normal] = await _publish(client, "acme", 1)
    await workers.start()
    await eventually(lambda: _all_in_state(client, [normal], "delivered"), what="delivered")
    await eventually(lambda: _dlq_reasons(redis, keys), what="the quarantined entry")
    assert await _dlq_reasons(redis, keys) == [b"malformed"]
    await eventually(lambda: _none_pending(redis, keys.ready("default:high")), what="acked")


async def _dlq_reasons(redis: aioredis.Redis, keys: Keys) -> list[bytes]:
    return [fields[b"r"] for _, fields in await stream_entries(redis, keys.dlq)]


async def _none_pending(redis: aioredis.Redis, key: str) -> bool:
    return int((await redis.xpending(key, "dispatch"))["pending"]) == 0


# --- isolation: the adaptive per-endpoint cap ----------------------------------------------------


async def test_a_hanging_endpoint_holds_few_slots_and_the_others_flow(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A webhook that never answers, with more jobs queued than the whole pool, ahead of 20
    healthy webhooks: it holds only its starting share of slots, its other jobs wait in Redis
    without spending attempts, and every healthy job is delivered before its first hung
    attempt even times out."""
    concurrency, timeout_s = 32, 5.0
    target.script("/hang", Hang())
    bad = await client.create_webhook("bad", target.url("/hang"))
    for i in range(20):
        await client.create_webhook(f"ok{i}", target.url(f"/ok{i}"))
    bad_ids = await _publish(client, "bad", 3 * concurrency)
    for _ in range(10):
        for i in range(20):
            await _publish(client, f"ok{i}", 1)

    await workers.start(concurrency=concurrency, timeout_s=timeout_s, stall_timeout_s=8)
    await eventually(
        lambda: sum(target.count(f"/ok{i}") for i in range(20)) == 200,
        timeout_s=timeout_s - 1,
        what="all 200 healthy deliveries",
    )
    hung = [r for r in target.received if r.path == "/hang"]
    healthy = [r for r in target.received if r.path != "/hang"]
    assert max(r.at for r in healthy) < min(r.at for r in hung) + timeout_s
    assert target.peak["/hang"] <= concurrency // START_FRACTION
    waiting = [j for j in await _jobs(client, bad_ids) if j["state"] == "scheduled"]
    assert waiting, "the hanging webhook's other jobs should wait in Redis"
    assert {(j["waiting_for"], j["attempt"]) for j in waiting} == {("endpoint_capacity", 0)}
    held = await eventually(
        lambda: workers.metrics.gauge("dispatcher_endpoint_in_flight", webhook_id=bad["id"]),
        what="the per-endpoint gauge",
    )
    assert 1 <= held <= concurrency // START_FRACTION


async def test_a_slow_endpoint_never_takes_the_whole_pool(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """An endpoint that answers 200 after 0.3 s, with a backlog far beyond the pool, never
    holds the last eighth of it, so a fast webhook's jobs go through while the backlog
    drains."""
    concurrency = 16
    target.script("/slow", Reply(delay_s=0.3))
    await client.create_webhook("slow-co", target.url("/slow"))
    await client.create_webhook("fast-co", target.url("/fast"))
    await workers.start(concurrency=concurrency)
    await _publish(client, "slow-co", 1)  # it learns that the endpoint is slow
    await target.wait_for(1, "/slow")
    slow_ids = await _publish(client, "slow-co", 300)
    await target.wait_for(120, "/slow", timeout_s=20)
    fast_ids = await _publish(client, "fast-co", 20)
    await eventually(
        lambda: _all_in_state(client, fast_ids, "delivered"), timeout_s=5, what="fast delivered"
    )
    slow_states = {j["state"] for j in await _jobs(client, slow_ids)}
    assert slow_states != {"delivered"}, "the fast jobs went while the slow backlog drained"
    assert target.peak["/slow"] <= concurrency - concurrency // 8


# --- cluster-wide limits: max_in_flight and rate_limit ---------------------------------------


async def test_max_in_flight_holds_across_workers(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Two workers share a webhook's max_in_flight: the target never sees more requests at
    once, and jobs that had to wait spent no attempt on waiting."""
    target.script("/capped", Reply(delay_s=0.1))
    await client.create_webhook("acme", target.url("/capped"), max_in_flight=3)
    ids = await _publish(client, "acme", 30)
    await workers.start()
    await workers.start()
    await target.wait_for(30, "/capped", timeout_s=20)
    await eventually(lambda: _all_in_state(client, ids, "delivered"), what="every job delivered")
    assert target.peak["/capped"] == 3
    assert {len(j["attempts"]) for j in await _jobs(client, ids)} == {1}


async def _all_in_state(client: Client, ids: list[str], state: str) -> bool:
    return {j["state"] for j in await _jobs(client, ids)} == {state}


async def test_rate_limited_jobs_wait_without_spending_attempts(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Jobs over a webhook's rate wait in Redis (scheduled, waiting for the rate limit, no
    attempt made) and are then delivered with one attempt each, one interval apart."""
    hook = await client.create_webhook(
        "acme", target.url("/limited"), rate_limit={"per_second": 10, "burst": 1}
    )
    assert hook["rate_limit"] == {"per_second": 10.0, "burst": 1.0}
    ids = await _publish(client, "acme", 15)
    await workers.start()
    await target.wait_for(2, "/limited")
    waiting = [j for j in await _jobs(client, ids) if j["state"] == "scheduled"]
    assert waiting
    assert {(j["waiting_for"], j["attempt"]) for j in waiting} == {("rate_limit", 0)}
    got = await target.wait_for(15, "/limited", timeout_s=10)
    assert got[-1].at - got[0].at > 14 * 0.1 * 0.9  # 10/s: 14 intervals of 0.1 s
    await eventually(lambda: _all_in_state(client, ids, "delivered"), what="all delivered")
    assert {len(j["attempts"]) for j in await _jobs(client, ids)} == {1}


async def _slots_scheduled(redis: aioredis.Redis, prefix: str, webhook_id: str) -> float | None:
    """The end of the webhook's rate schedule in Redis: every slot taken moves it on."""
    stored = await redis.hget(Keys(prefix).rates, webhook_id)
    return float(stored.split()[0]) if stored else None


async def test_a_backlog_under_max_in_flight_takes_one_rate_slot_per_job(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """A rate-limited backlog whose jobs come back late for their slots because max_in_flight
    is full takes exactly one slot per job, so the webhook drains it at its rate."""
    target.script("/capped", Reply(delay_s=1.5), Reply(delay_s=1.5), Reply())
    hook = await client.create_webhook(
        "acme", target.url("/capped"), rate_limit={"per_second": 4, "burst": 1}, max_in_flight=2
    )
    ids = await _publish(client, "acme", 12)  # one read claims them all: 1 goes, 11 reserve
    await workers.start()
    schedule = await eventually(
        lambda: _slots_scheduled(redis, prefix, hook["id"]), what="the slots handed out"
    )
    await eventually(
        lambda: _all_in_state(client, ids, "delivered"), timeout_s=20, what="all delivered"
    )
    assert {len(j["attempts"]) for j in await _jobs(client, ids)} == {1}
    assert workers.metrics.get("dispatcher_deferred_total", reason="max_in_flight") > 0
    assert await _slots_scheduled(redis, prefix, hook["id"]) == schedule  # no second slot


async def test_a_job_claimed_long_after_its_reserved_slot_takes_no_other(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A job that comes back seconds after the rate slot reserved for it goes on that slot,
    without taking another one from the jobs behind it."""
    hook = Webhook(
        id="wh_rated",
        tenant_id="acme",
        url="https://hooks.example.com/x",
        event_types=["*"],
        secret="whsec_x",  # noqa: S106 - a test webhook
        rate_limit={"per_second": 10, "burst": 1},
    )
    meta = b'{"w":"wh_rated","t":"acme","e":"a.b","q":"default","s":"queued","a":0,"k":0,"c":0}'
    jobs = [codec.decode(f"job_{n}", meta + b"\n{}") for n in range(3)]
    store = client.store
    _, first = await admission.admit(store, [(j, hook) for j in jobs], attempt_timeout_s=1)
    assert [d.verdict for d in first] == [
        Admission.ADMITTED,
        Admission.RESERVED,
        Admission.RESERVED,
    ]
    schedule = await _slots_scheduled(redis, prefix, hook.id)
    late = jobs[1]
    late.reserved_ms = first[1].due_ms - 5_000  # as if it were claimed 5 s after its slot
    _, again = await admission.admit(store, [(late, hook)], attempt_timeout_s=1)
    assert [d.verdict for d in again] == [Admission.ADMITTED]
    assert await _slots_scheduled(redis, prefix, hook.id) == schedule


@pytest.mark.slow
async def test_rate_limit_holds_across_two_processes(
    redis_url: str, prefix: str, client: Client, target: Target, tmp_path: Path
) -> None:
    """Two ``dispatcher run`` processes deliver a webhook limited to 20/s at 20/s (within
    10% over 10 s, as the issue asks), both taking part, while an unlimited webhook served by
    the same processes gets its whole backlog through at full speed meanwhile."""
    await client.create_webhook(
        "limited", target.url("/limited"), rate_limit={"per_second": 20, "burst": 1}
    )
    await client.create_webhook("free", target.url("/free"))
    limited_ids = await _publish(client, "limited", 300)
    await _publish(client, "free", 1000)
    env = daemon_env(redis_url, prefix, log_level="debug")
    daemons = [Daemon(env, tmp_path / f"d{i}.log").start() for i in range(2)]
    try:
        got = await target.wait_for(250, "/limited", timeout_s=30)
        first = got[0].at
        in_window = [r for r in got if first + 1 <= r.at < first + 11]
        print(f"rate limit 20/s over 2 processes: {len(in_window)} deliveries in 10 s")
        assert 180 <= len(in_window) <= 220, f"{len(in_window)} deliveries in 10 s at 20/s"
        free = [r for r in target.received if r.path == "/free"]
        assert len(free) == 1000
        assert max(r.at for r in free) < got[60].at  # done before 3 s of the limited backlog
        senders = [_delivered_by(d.log, set(limited_ids)) for d in daemons]
        assert all(senders), f"both processes should deliver the limited webhook: {senders}"
    finally:
        await stop_daemons(*daemons)


def _delivered_by(log: str, ids: set[str]) -> int:
    count = 0
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        event = orjson.loads(line)
        if event.get("event") == "delivery.succeeded" and event.get("job_id") in ids:
            count += 1
    return count


@pytest.mark.slow
async def test_leases_of_a_killed_process_expire(
    redis_url: str,
    prefix: str,
    client: Client,
    workers: WorkerHarness,
    target: Target,
    tmp_path: Path,
) -> None:
    """A process killed while it holds a webhook's only in-flight slot does not wedge the
    webhook: its lease expires and another worker delivers everything."""
    target.script("/one", Hang(), Reply())
    await client.create_webhook("acme", target.url("/one"), max_in_flight=1)
    ids = await _publish(client, "acme", 4)
    env = daemon_env(redis_url, prefix, delivery_timeout_s="2", delivery_stall_timeout_s="3")
    daemon = Daemon(env, tmp_path / "d.log").start()
    try:
        await target.wait_for(1, "/one", timeout_s=15)
        daemon.kill()
    finally:
        await stop_daemons(daemon)
    await workers.start(timeout_s=2, stall_timeout_s=3)
    await eventually(
        lambda: _all_in_state(client, ids, "delivered"), timeout_s=30, what="all delivered"
    )


async def _pending_of(redis: aioredis.Redis, prefix: str, queues: tuple[str, ...]) -> int:
    """Entries pending (claimed, no outcome written) in the given queues, for any consumer."""
    total = 0
    for queue in queues:
        for stream in streams_of(queue):
            summary = await redis.xpending(Keys(prefix).ready(stream), GROUP)
            total += int(summary["pending"])
    return total


async def test_a_worker_never_claims_past_its_lanes(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """A worker serving several queues holds at most as many claimed jobs as it has lanes, even
    when work arrives on all of them at once while its reads are blocked."""
    queues = ("qa", "qb", "qc")
    for queue in queues:
        target.script(f"/{queue}", Reply(delay_s=1.5))
        await client.create_webhook(queue, target.url(f"/{queue}"), queue=queue)
    await workers.start(concurrency=2, queues=queues, timeout_s=3)
    await eventually(lambda: _signed_in(client), what="the worker's first heartbeat")
    for queue in queues:  # every read loop is blocked, each sure of the two free lanes
        for priority in ("high", "normal", "low"):
            await client.publish(queue, "order.created", {}, priority=priority)
    await eventually(lambda: sum(target.active.values()) == 2, what="both lanes busy")
    assert await _pending_of(redis, prefix, queues) == 2  # claimed: the two being attempted
    await eventually(lambda: target.count() == 9, timeout_s=20, what="all nine sent")
    assert max(target.peak.values()) <= 2


async def test_max_in_flight_holds_when_a_job_waits_for_a_lane(
    client: Client,
    workers: WorkerHarness,
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A max_in_flight=1 webhook served by two workers never has two attempts at once, even
    when work for other webhooks arrives at once on every queue of a one-lane worker, which
    once left an admitted job waiting in the inbox past its lease."""
    monkeypatch.setattr(admission, "LEASE_MARGIN_S", 0.2)  # leases of 2.2 s
    target.script("/s1", Reply(delay_s=1.5))
    target.script("/s2", Reply(delay_s=1.5))
    target.script("/one", Reply(delay_s=1.0))
    await client.create_webhook("s1", target.url("/s1"), queue="s1")
    await client.create_webhook("s2", target.url("/s2"), queue="s2")
    await client.create_webhook("acme", target.url("/one"), max_in_flight=1)
    await workers.start(concurrency=1, queues=("s1", "s2", "default"), timeout_s=2)
    await eventually(lambda: _signed_in(client), what="the worker's first heartbeat")
    ids = [
        *await _publish(client, "s1", 1),
        *await _publish(client, "s2", 1),
        *await _publish(client, "acme", 1),
    ]
    await target.wait_for(1)
    ids += await _publish(client, "acme", 3)
    await workers.start(concurrency=1, timeout_s=2)
    await eventually(
        lambda: _all_in_state(client, ids, "delivered"), timeout_s=30, what="all delivered"
    )
    assert target.peak["/one"] == 1


async def test_a_lease_runs_from_the_start_of_its_attempt(client: Client) -> None:
    """A job whose lease ran out while it waited for a lane may start only if the webhook's
    max_in_flight still has room; a lease still held is renewed for the whole attempt."""
    hook = Webhook(
        id="wh_capped",
        tenant_id="acme",
        url="https://hooks.example.com/x",
        event_types=["*"],
        secret="whsec_x",  # noqa: S106 - a test webhook
        max_in_flight=1,
    )
    meta = b'{"w":"wh_capped","t":"acme","e":"a.b","q":"default","s":"queued","a":0,"k":0,"c":0}'
    first, second = (codec.decode(f"job_{n}", meta + b"\n{}") for n in range(2))
    store = client.store
    _, [decision] = await admission.admit(
        store, [(first, hook)], attempt_timeout_s=-admission.LEASE_MARGIN_S, holder="a"
    )
    assert decision.verdict is Admission.ADMITTED  # its lease has already run out
    _, [decision] = await admission.admit(store, [(second, hook)], attempt_timeout_s=5, holder="b")
    assert decision.verdict is Admission.ADMITTED
    assert not await admission.start_lease(store, hook, first.id, holder="a", attempt_timeout_s=5)
    assert await admission.start_lease(store, hook, second.id, holder="b", attempt_timeout_s=5)


async def test_a_stale_outcome_leaves_the_reclaiming_workers_lease(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """When a worker that lost its claim writes its outcome late, the lease of the worker
    that took the job over stays in place, so max_in_flight still counts its attempt."""
    created = await client.create_webhook("acme", "https://hooks.example.com/x", max_in_flight=2)
    store = client.store
    await streams.ensure_group(store, "default")
    [job_id] = await _publish(client, "acme", 1)
    raw = await redis.hget(Keys(prefix).webhooks, created["id"])
    assert isinstance(raw, bytes)
    hook = Webhook.decode(raw)
    [stale], _ = await streams.claim_new(store, ("default",), "a", budget=1)
    [job] = (await streams.load(store, [stale])).jobs
    assert job is not None
    await admission.admit(store, [(job, hook)], attempt_timeout_s=5, holder="a")
    page = await streams.reclaim_page(store, "default", "b", min_idle_ms=0, cursor="0-0", count=10)
    [current] = page.claims
    await admission.admit(store, [(job, hook)], attempt_timeout_s=5, holder="b")
    late = Settlement(
        stale,
        SettleKind.DELIVERED,
        codec.encode(job),
        0,
        "",
        b"[0,200,1.0,null,1]",
        lease_of=hook.id,
    )
    assert await streams.settle(store, "a", [late]) == [job_id]
    leases = await redis.zrange(Keys(prefix).lease(hook.id), 0, -1)
    assert leases == [admission.lease_member(job_id, "b").encode()]
    assert current.job_id == job_id


# --- circuit breakers ----------------------------------------------------------------------------


async def _breaker(client: Client, webhook_id: str) -> dict[str, Any] | None:
    return cast("dict[str, Any] | None", (await client.get_webhook(webhook_id))["breaker"])


async def _breaker_state(client: Client, webhook_id: str) -> str | None:
    breaker = await _breaker(client, webhook_id)
    return breaker["state"] if breaker else None


async def test_breaker_opens_on_sustained_failures_and_parks_jobs(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """At least 10 attempts, 70% failed: the breaker opens; the webhook, its jobs and the
    status say so; new jobs wait parked in Redis and no attempt goes out while it is open."""
    target.script("/down", Reply(500))
    hook = await client.create_webhook("acme", target.url("/down"))
    await _publish(client, "acme", 12)
    await workers.start(max_attempts=20, breaker_open_s=60)
    await eventually(lambda: _breaker_state(client, hook["id"]), timeout_s=15, what="a breaker")
    await eventually(lambda: _is(client, hook["id"], "open"), timeout_s=15, what="open")
    breaker = await _breaker(client, hook["id"])
    assert breaker is not None
    assert breaker["last_error"] == "HTTP 500: ok"
    assert breaker["retry_at"] > breaker["opened_at"]
    sent = target.count("/down")
    assert sent >= 10

    later = await _publish(client, "acme", 5)
    await eventually(lambda: _all_parked(client, later), timeout_s=10, what="new jobs parked")
    for job in await _jobs(client, later):
        assert (job["state"], job["waiting_for"], job["attempt"]) == ("scheduled", "breaker", 0)
        assert job["breaker"] == "open"
    status = await client.status()
    assert status["breakers"]["open"] == 1
    assert status["breakers"]["parked"] >= len(later)
    assert status["scheduled"] >= status["breakers"]["parked"]
    assert status["breakers"]["tripped"][0]["webhook_id"] == hook["id"]
    assert target.count("/down") == sent


async def _is(client: Client, webhook_id: str, state: str) -> bool:
    return await _breaker_state(client, webhook_id) == state


async def _all_parked(client: Client, ids: list[str]) -> bool:
    return all(j["waiting_for"] == "breaker" for j in await _jobs(client, ids))


async def test_breaker_half_opens_with_one_probe_and_reopens_when_it_fails(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """After its open period one job, and only one, goes out as the probe; it fails, so the
    breaker opens again for twice as long; the parked jobs spent no attempt meanwhile."""
    target.script("/down", Reply(500))
    hook = await client.create_webhook("acme", target.url("/down"))
    ids = await _publish(client, "acme", 12)
    await workers.start(max_attempts=20, breaker_open_s=1.5)
    await eventually(lambda: _is(client, hook["id"], "open"), timeout_s=15, what="open")
    first = await _breaker(client, hook["id"])
    assert first is not None
    sent = target.count("/down")
    await target.wait_for(sent + 1, "/down", timeout_s=10)  # the probe
    await eventually(
        lambda: _reopened_after(client, hook["id"], first["opened_at"]),
        timeout_s=10,
        what="the breaker open again after the failed probe",
    )
    assert target.count("/down") == sent + 1
    again = await _breaker(client, hook["id"])
    assert again is not None
    assert workers.metrics.get("dispatcher_breaker_transitions_total", state="half_open") >= 1
    jobs = await _jobs(client, ids)
    assert sum(len(j["attempts"]) for j in jobs) == target.count("/down")


async def _reopened_after(client: Client, webhook_id: str, opened_at: str) -> bool:
    breaker = await _breaker(client, webhook_id)
    return breaker is not None and breaker["state"] == "open" and breaker["opened_at"] > opened_at


async def test_breaker_closes_when_the_probe_succeeds_and_parked_jobs_are_delivered(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """The endpoint recovers: the probe succeeds, the breaker closes, and every parked job is
    delivered."""
    target.script("/flaky", Reply(500))
    hook = await client.create_webhook("acme", target.url("/flaky"))
    ids = await _publish(client, "acme", 12)
    await workers.start(max_attempts=20, breaker_open_s=1)
    await eventually(lambda: _is(client, hook["id"], "open"), timeout_s=15, what="open")
    ids += await _publish(client, "acme", 20)
    await eventually(lambda: _all_parked(client, ids[12:]), timeout_s=10, what="parked")
    target.script("/flaky", Reply(200))
    await eventually(lambda: _is(client, hook["id"], "closed"), timeout_s=15, what="closed")
    await eventually(
        lambda: _all_in_state(client, ids, "delivered"), timeout_s=20, what="all delivered"
    )
    assert (await client.status())["breakers"]["open"] == 0


async def test_a_webhook_failing_too_long_is_disabled_with_the_reason(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """No success for delivery.disable_after_s: the webhook is disabled, the reason says
    since when and the last error, its jobs are dead-lettered as webhook_disabled; enabling
    it again closes its breaker."""
    target.script("/gone-bad", Reply(503))
    hook = await client.create_webhook("acme", target.url("/gone-bad"))
    ids = await _publish(client, "acme", 12)
    await workers.start(max_attempts=50, breaker_open_s=0.5, disable_after_s=2)
    disabled = await eventually(
        lambda: _disabled(client, hook["id"]), timeout_s=20, what="webhook disabled"
    )
    assert disabled["disabled_reason"].startswith("no successful delivery since ")
    assert disabled["disabled_reason"].endswith("; last error: HTTP 503: ok")
    await eventually(lambda: _all_in_state(client, ids, "dead"), timeout_s=15, what="all dead")
    assert {j["dead_reason"] for j in await _jobs(client, ids)} == {"webhook_disabled"}

    enabled = await client.update_webhook(hook["id"], enabled=True)
    assert enabled["enabled"] is True
    breaker = enabled["breaker"]
    assert breaker is not None
    assert breaker["state"] == "closed"


async def _disabled(client: Client, webhook_id: str) -> shapes.Webhook | None:
    hook = await client.get_webhook(webhook_id)
    return None if hook["enabled"] else hook
