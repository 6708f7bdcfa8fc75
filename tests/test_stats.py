"""Per-webhook delivery stats: the histogram's bound, a known workload counted exactly by a real
worker, the rollup of minutes into hours, and ``GET /v1/webhooks/{id}/stats``."""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import exceptions as redis_exceptions

from dispatcher import Client, InvalidField, NotFound, RedisUnavailable, histogram
from dispatcher.queue import stats
from dispatcher.queue.store import Store
from dispatcher.tally import Tally
from tests.admin_api import start_api
from tests.helpers import eventually, free_port
from tests.target import Reply

if TYPE_CHECKING:

    import redis.asyncio as aioredis

    from tests.admin_api import Api
    from tests.conftest import WorkerHarness
    from tests.target import Target

#: What network and scheduling can add to an attempt's duration over the target's own delay
#: on loopback (the measure can only be longer than the delay, never shorter).
OVERHEAD_MS = 30.0
#: The same for the slowest attempts, where a busy test machine's pauses land.
TAIL_OVERHEAD_MS = 150.0
BOUND = histogram.RELATIVE_ERROR


def _exact(values: list[float], q: float) -> float:
    """The nearest-rank percentile, values under 1 ms counting as 1 ms."""
    ordered = sorted(max(v, 1.0) for v in values)
    return ordered[histogram.rank_of(q, len(ordered)) - 1]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e9, allow_nan=False), min_size=1, max_size=300),
    st.floats(min_value=0.001, max_value=1.0),
)
def test_percentiles_are_within_the_stated_bound(values: list[float], q: float) -> None:
    """Any percentile read from the histogram is within 5% (plus its 0.05 ms rounding) of the
    exact nearest-rank percentile of the values counted in it."""
    counts: dict[int, int] = {}
    for value in values:
        bucket = histogram.bucket_of(value)
        counts[bucket] = counts.get(bucket, 0) + 1
    exact = _exact(values, q)
    [got] = histogram.percentiles(counts, (q,))
    assert got is not None
    assert abs(got - exact) <= BOUND * exact + 0.05 + 1e-9


@given(st.floats(min_value=-1e3, max_value=1e30, allow_nan=False))
def test_the_worker_counts_each_duration_in_its_histogram_bucket(ms: float) -> None:
    """The worker's inline bucketing (tally.py) is histogram.bucket_of, the bound's premise."""
    tally = Tally()
    tally.attempt("wh_a", 1, ms, ms)
    fields = tally.minutes[1]["wh_a"]
    bucket = histogram.bucket_of(ms)
    assert fields[f"l{bucket}"] == fields[f"g{bucket}"] == 1


def test_an_empty_histogram_has_no_percentiles() -> None:
    """No value counted: every percentile is None (the API's null)."""
    assert histogram.percentiles({}) == [None, None, None]


def test_counts_kept_through_an_outage_stay_bounded() -> None:
    """Counts a flush could not write are kept for the next one, except minutes Redis would
    already have expired, so a long outage cannot grow the worker's memory without end."""
    tally = Tally()
    tally.attempt("wh_a", 10, 20.0, 30.0)
    tally.attempt("wh_a", 500, 20.0, None)
    taken = tally.take()
    assert tally.minutes == {}
    tally.give_back(taken, oldest_minute=400)
    assert list(tally.minutes) == [500]
    assert tally.minutes[500]["wh_a"]["a"] == 1
    assert tally.minutes[500]["wh_a"]["f"] == 1


# --- a known workload through a real worker ----------------------------------------------------

JOBS = 100
FAILURES = 10  # every tenth request answers 500 (the job is retried and then delivers)
SLOW = (1, 3)  # requests whose position modulo 5 is here answer after 80 ms, the others 20 ms


def _script(target: Target) -> None:
    """The target's answers by arrival: positions 5, 15, ..., 95 fail; 40% take 80 ms."""
    replies = [
        Reply(
            500 if i % 10 == 5 and i < JOBS else 200,
            delay_s=0.08 if i % 5 in SLOW else 0.02,
        )
        for i in range(JOBS + FAILURES)
    ]
    target.script("/hook", *replies)


async def _settled(api: Api, webhook_id: str, window: str, attempts: int) -> dict[str, Any]:
    """The webhook's stats once ``attempts`` attempts are flushed (each second)."""
    path = f"/v1/webhooks/{webhook_id}/stats"

    async def flushed() -> dict[str, Any] | None:
        answer = await api.call("GET", path, params={"window": window})
        assert answer.status == 200, answer.body
        body: dict[str, Any] = answer.body
        return body if body["attempts"] >= attempts else None

    found: dict[str, Any] = await eventually(flushed, timeout_s=15, what="the stats flushed")
    return found


@pytest.mark.alone  # its latency bounds hold for an unshared machine
async def test_a_known_workload_is_counted_exactly_and_its_percentiles_within_the_bound(
    client: Client, workers: WorkerHarness, target: Target, api: Api, store: Store
) -> None:
    """100 jobs to a target failing 10 requests and answering 60% after 20 ms, 40% after 80 ms:
    110 attempts, 100 delivered, 10 failed, p50 near 20 ms and p95/p99 near 80 ms (within 5%,
    plus what loopback can add), and lag measured from publish."""
    _script(target)
    hook = await client.create_webhook("acme", target.url("/hook"))
    await workers.start(max_attempts=20, backoff_base_s=0.05, backoff_cap_s=0.2)
    await client.publish_many(
        [
            {"tenant_id": "acme", "event_type": "order.paid", "payload": {"n": n}}
            for n in range(JOBS)
        ]
    )
    await target.wait_for(JOBS + FAILURES, "/hook", timeout_s=30)
    got = await _settled(api, hook["id"], "1h", JOBS + FAILURES)
    assert (got["attempts"], got["delivered"], got["failed"]) == (JOBS + FAILURES, JOBS, FAILURES)
    assert got["success_rate"] == round(JOBS / (JOBS + FAILURES), 4)
    latency = got["latency_ms"]
    assert 20 * (1 - BOUND) <= latency["p50"] <= 20 * (1 + BOUND) + OVERHEAD_MS
    for q in ("p95", "p99"):
        assert 80 * (1 - BOUND) <= latency[q] <= 80 * (1 + BOUND) + TAIL_OVERHEAD_MS
    lag = got["lag_ms"]
    assert lag["p50"] >= 20 * (1 - BOUND)  # a delivery's lag holds its own attempt at least
    assert lag["p99"] >= 80 * (1 - BOUND)
    assert len(got["series"]) == 60
    assert sum(p["attempts"] for p in got["series"]) == JOBS + FAILURES
    assert sum(p["failed"] for p in got["series"]) == FAILURES
    assert got["series"][-1]["t"].endswith(":00.000Z")

    # 24 h before any rollup: the pending minutes are counted in their hours
    day = await _settled(api, hook["id"], "24h", JOBS + FAILURES)
    same = ("attempts", "delivered", "failed", "success_rate", "latency_ms", "lag_ms")
    assert {k: day[k] for k in same} == {k: got[k] for k in same}
    assert len(day["series"]) == 24

    # rolled up (as if three minutes later), then with the minutes gone: the same totals
    await workers.stop()
    later_ms = store.clock.now_ms() + 3 * 60_000
    assert await stats.rollup(store, later_ms) >= 1
    assert await stats.rollup(store, later_ms) == 0  # nothing left: a second run adds nothing
    rolled = (await api.call("GET", f"/v1/webhooks/{hook['id']}/stats?window=24h")).body
    assert {k: rolled[k] for k in same} == {k: got[k] for k in same}
    redis = store.redis
    minutes = [k async for k in redis.scan_iter(f"{store.keys.prefix}:*wstats:m:*")]
    assert minutes
    await redis.delete(*minutes)
    week = (await api.call("GET", f"/v1/webhooks/{hook['id']}/stats?window=7d")).body
    assert {k: week[k] for k in same} == {k: got[k] for k in same}
    assert sum(p["attempts"] for p in week["series"]) == JOBS + FAILURES
    hour = (await api.call("GET", f"/v1/webhooks/{hook['id']}/stats")).body
    assert (hour["attempts"], hour["success_rate"], hour["latency_ms"]["p50"]) == (0, None, None)


# --- the rollup ------------------------------------------------------------------------------


def _tally(minutes: range, webhook_ids: list[str]) -> Tally:
    """Counts for each minute and webhook: 3 attempts, one failed, durations 10, 100, 1000 ms."""
    tally = Tally()
    for minute in minutes:
        for webhook_id in webhook_ids:
            tally.attempt(webhook_id, minute, 10.0, 50.0)
            tally.attempt(webhook_id, minute, 100.0, None)
            tally.attempt(webhook_id, minute, 1000.0, 2000.0)
    return tally


async def test_concurrent_rollups_count_each_minute_once_and_late_counts_reach_the_hour(
    client: Client, store: Store, redis: aioredis.Redis
) -> None:
    """Two rollups at once add each minute to its hour once; counts flushed after their minute
    was rolled reach the hour too; nothing is left pending."""
    hooks = [(await client.create_webhook("acme", "https://hooks.example.com/x"))["id"]]
    now_ms = store.clock.now_ms()
    first = now_ms // 60_000 - 100
    await stats.add(store, _tally(range(first, first + 90), hooks).take(), now_ms)
    handled = await asyncio.gather(*(stats.rollup(store, now_ms) for _ in range(2)))
    assert sum(handled) >= 90
    late = _tally(range(first, first + 1), hooks).take()
    await stats.add(store, late, now_ms)
    assert late == {}  # written: nothing is kept for the next flush
    assert await stats.rollup(store, now_ms) == 0
    assert await redis.zcard(store.keys.hook_pending) == 0
    minutes = [k async for k in redis.scan_iter(f"{store.keys.prefix}:*wstats:m:*")]
    await redis.delete(*minutes)
    week = await client.webhook_stats(hooks[0], "7d")
    assert (week["attempts"], week["delivered"], week["failed"]) == (3 * 91, 2 * 91, 91)
    latency = dict(week["latency_ms"])
    assert latency == {
        "p50": pytest.approx(100, rel=BOUND),
        "p95": pytest.approx(1000, rel=BOUND),
        "p99": pytest.approx(1000, rel=BOUND),
    }


async def test_a_busy_shard_cannot_keep_another_shards_minutes_from_rolling(
    store: Store, redis: aioredis.Redis
) -> None:
    """Each rollup run shares its budget between the shards: minutes of a quiet shard are
    rolled even while a busy one has more pending than one run may roll (else they would
    wait behind it until they expire, lost to the 24 h and 7 d windows)."""
    await store.adopt_layout(2)
    busy, quiet = "wh_" + "a" * 20, "wh_" + "b" * 20 + ".1"
    now_ms = store.clock.now_ms()
    first = now_ms // 60_000 - 100
    await stats.add(store, _tally(range(first, first + 10), [busy]).take(), now_ms)
    await stats.add(store, _tally(range(first, first + 1), [quiet]).take(), now_ms)
    assert await stats.rollup(store, now_ms, budget=4) == 4
    shard = store.shard(1)
    assert await redis.zcard(shard.keys.hook_pending) == 0
    hour = await redis.hgetall(shard.keys.hook_hour(quiet, first // 60))
    assert hour[b"a"] == b"3"


async def test_counts_a_flush_cannot_write_stay_for_the_next_one(
    redis_url: str, prefix: str, store: Store
) -> None:
    """With Redis away the counts stay in the worker's hands, untouched; the next flush writes
    them, once."""
    counts = _tally(range(5, 7), ["wh_a", "wh_b"]).take()
    kept = copy.deepcopy(counts)
    down = Store.open(f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    try:
        with pytest.raises(redis_exceptions.ConnectionError):
            await stats.add(down, counts, 7 * 60_000)
    finally:
        await down.close()
    assert counts == kept
    await stats.add(store, counts, 7 * 60_000)
    assert counts == {}
    minute = await store.redis.hgetall(store.keys.hook_minute("wh_a", 5))
    assert (minute[b"a"], minute[b"d"], minute[b"f"]) == (b"3", b"2", b"1")


# --- the API ---------------------------------------------------------------------------------


async def test_the_window_is_checked_and_an_unknown_webhook_is_404_both_ways(
    client: Client, api: Api
) -> None:
    """A window other than 1h, 24h or 7d is 422 invalid_field naming window (InvalidField in
    Python); an unknown webhook is 404 not_found (NotFound), as for the other webhook routes."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    path = f"/v1/webhooks/{hook['id']}/stats"
    bad = await api.call("GET", path, params={"window": "2h"})
    assert (bad.status, bad.body["error"]["code"]) == (422, "invalid_field")
    assert bad.body["error"]["message"].startswith("window:")
    with pytest.raises(InvalidField) as raised:
        await client.webhook_stats(hook["id"], "2h")
    assert raised.value.field == "window"
    unknown = await api.call("GET", "/v1/webhooks/wh_nope/stats")
    assert (unknown.status, unknown.body["error"]["code"]) == (404, "not_found")
    with pytest.raises(NotFound):
        await client.webhook_stats("wh_nope")
    empty = await api.call("GET", path, params={"window": "7d"})
    assert empty.body == await client.webhook_stats(hook["id"], "7d")
    assert (empty.body["attempts"], empty.body["success_rate"]) == (0, None)
    assert len(empty.body["series"]) == 168


async def _time_refusing_proxy(redis_port: int) -> asyncio.Server:
    """A loopback proxy to the real Redis that drops any connection sending ``TIME``: Redis
    lost just as a stats read measures the server's clock."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, check: bool) -> None:
        try:
            while data := await reader.read(65536):
                if check and b"TIME\r\n" in data.upper():
                    break
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", redis_port)
        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_redis_lost_while_the_clock_is_measured_is_503_not_500(
    client: Client, redis_url: str, prefix: str
) -> None:
    """A stats read that loses Redis when it measures the server's clock answers 503
    redis_unavailable (RedisUnavailable in Python), like any other Redis outage."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    proxy = await _time_refusing_proxy(urlsplit(redis_url).port or 6379)
    port = proxy.sockets[0].getsockname()[1]
    try:
        async with Client.from_url(f"redis://127.0.0.1:{port}/0", prefix=prefix) as fresh:
            with pytest.raises(RedisUnavailable):
                await fresh.webhook_stats(hook["id"])  # a fresh client measures the clock
            _app, served = await start_api(fresh)
            try:
                answer = await served.call("GET", f"/v1/webhooks/{hook['id']}/stats")
            finally:
                await served.close()
            assert (answer.status, answer.body["error"]["code"]) == (503, "redis_unavailable")
    finally:
        proxy.close()
