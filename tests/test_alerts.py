"""Backlog alerts: what is measured in a real Redis, and when an alert is raised and cleared."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest
import redis.exceptions as rex
from structlog.testing import capture_logs

from dispatcher.alerts import Alerts
from dispatcher.config import AlertsConfig
from dispatcher.metrics import Metrics
from dispatcher.queue.backlog import Backlog, measure
from dispatcher.queue.keys import GROUP, Keys
from tests.helpers import StreamEntries, stream_entries

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import redis.asyncio as aioredis

    from dispatcher import Client


def _ms(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


async def _claim_one(conn: aioredis.Redis, stream_key: str) -> bytes:
    """Claim the next entry as a worker would (XREADGROUP), so it is no longer ready."""
    try:
        await conn.xgroup_create(stream_key, GROUP, "0", mkstream=True)
    except rex.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    reply = await cast(
        "Awaitable[list[tuple[bytes, StreamEntries]]]",
        conn.xreadgroup(GROUP, "test:1:1", {stream_key: ">"}, count=1),
    )
    [(_, [(entry_id, _)])] = reply
    return entry_id


async def test_measure_reads_an_empty_deployment(client: Client) -> None:
    """With nothing published there is no backlog, no oldest job and no DLQ yet."""
    backlog = await measure(client.store)
    assert (backlog.queued, backlog.oldest_ready_ms, backlog.dlq_added) == (0, None, 0)
    assert backlog.oldest_ready_age_s == 0.0
    assert backlog.now_ms > 0


async def test_measure_finds_the_oldest_unclaimed_job_across_priorities(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Queued counts every priority stream; the oldest ready job is the first one not claimed."""
    await client.create_webhook("acme", "https://hooks.example.com/a")
    await client.publish("acme", "a.b", {"n": 0}, priority="low")
    for n in range(1, 4):
        await client.publish("acme", "a.b", {"n": n})
    await client.publish("acme", "a.b", {"n": 4}, priority="high")
    keys = Keys(prefix)
    low, normal, high = keys.ready("default:low"), keys.ready("default"), keys.ready("default:high")

    before = await measure(client.store)
    [(low_id, _)] = await stream_entries(redis, low)
    assert before.queued == 5
    assert before.oldest_ready_ms == _ms(low_id)  # published first (others may share its ms)
    firsts = {
        name: _ms((await stream_entries(redis, keys.ready(name)))[0][0])
        for name in ("default:high", "default", "default:low")
    }
    assert firsts[before.oldest_queue or ""] == before.oldest_ready_ms

    await _claim_one(redis, low)
    await _claim_one(redis, normal)
    after = await measure(client.store)
    unclaimed = (await stream_entries(redis, normal))[1:] + await stream_entries(redis, high)
    assert after.queued == 3
    assert after.oldest_ready_ms == min(_ms(entry_id) for entry_id, _ in unclaimed)
    assert after.oldest_queue in {"default", "default:high"}  # the low one is claimed
    assert after.now_ms >= after.oldest_ready_ms


async def test_measure_counts_every_dlq_entry_ever_added(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """The DLQ counter keeps counting entries that were deleted (replayed or purged) since."""
    dlq = Keys(prefix).dlq
    ids = [await redis.xadd(dlq, {"j": f"job_{n}", "r": "test"}) for n in range(3)]
    await redis.xdel(dlq, ids[0])
    backlog = await measure(client.store)
    assert backlog.dlq_added == 3


def _backlog(
    now_s: float, *, queued: int = 0, age_s: float | None = None, dlq_added: int = 0
) -> Backlog:
    now_ms = int(now_s * 1000)
    oldest = None if age_s is None else now_ms - int(age_s * 1000)
    return Backlog(now_ms, queued, oldest, "default" if oldest else None, dlq_added)


def test_alert_is_raised_once_and_cleared_below_ninety_percent() -> None:
    """Reaching the threshold logs alert.raised once; only a value under 90% of it clears it."""
    alerts = Alerts(AlertsConfig(queued_max=100, oldest_ready_age_s=0, dlq_growth=0))
    with capture_logs() as logs:
        alerts.observe(_backlog(1000, queued=99))
        assert alerts.active() == []
        alerts.observe(_backlog(1005, queued=100))
        alerts.observe(_backlog(1010, queued=150))
        alerts.observe(_backlog(1015, queued=91))  # under the threshold, not under 90%
        [active] = alerts.active()
        alerts.observe(_backlog(1020, queued=89))
    assert active == {
        "name": "queued_max",
        "value": 91,
        "threshold": 100,
        "since": "1970-01-01T00:16:45.000Z",
    }
    assert alerts.active() == []
    events = [(e["event"], e.get("value")) for e in logs if e["event"].startswith("alert.")]
    assert events == [("alert.raised", 100), ("alert.cleared", 89)]
    cleared = next(e for e in logs if e["event"] == "alert.cleared")
    assert cleared["raised_for_s"] == 15.0


def test_oldest_ready_age_alert_names_its_queue() -> None:
    """The age alert compares seconds and its log line says which stream holds the old job."""
    alerts = Alerts(AlertsConfig(queued_max=0, oldest_ready_age_s=60, dlq_growth=0))
    with capture_logs() as logs:
        alerts.observe(_backlog(5000, queued=1, age_s=59.9))
        alerts.observe(_backlog(5005, queued=1, age_s=65.0))
    [raised] = [e for e in logs if e["event"] == "alert.raised"]
    assert (raised["name"], raised["value"], raised["queue"]) == (
        "oldest_ready_age_s",
        65.0,
        "default",
    )


def test_dlq_growth_counts_only_within_the_window() -> None:
    """DLQ growth is the counter's rise since the window's start, not since the daemon started."""
    alerts = Alerts(AlertsConfig(queued_max=0, oldest_ready_age_s=0, dlq_growth=5, dlq_window_s=60))
    alerts.observe(_backlog(0, dlq_added=10))
    alerts.observe(_backlog(30, dlq_added=14))
    assert alerts.values["dlq_growth"] == 4
    alerts.observe(_backlog(60, dlq_added=15))  # 5 within the last 60 s: raised
    assert [a["name"] for a in alerts.active()] == ["dlq_growth"]
    alerts.observe(_backlog(100, dlq_added=15))  # only the rise since t=30 counts now
    assert alerts.values["dlq_growth"] == 1
    assert alerts.active() == []
    alerts.observe(_backlog(105, dlq_added=2))  # the DLQ stream was deleted: count afresh
    assert alerts.values["dlq_growth"] == 0


def test_turning_an_alert_off_clears_it_and_metrics_follow() -> None:
    """A reload that sets a threshold to 0 clears its alert; the gauges show states and values."""
    alerts = Alerts(AlertsConfig(queued_max=10, oldest_ready_age_s=30, dlq_growth=0))
    metrics = Metrics()
    alerts.observe(_backlog(10, queued=12, age_s=40.0))
    alerts.export(metrics)
    assert metrics.gauge("dispatcher_alert_active", name="queued_max") == 1
    assert metrics.gauge("dispatcher_alert_active", name="oldest_ready_age_s") == 1
    assert metrics.gauge("dispatcher_alert_active", name="dlq_growth") == 0
    assert metrics.gauge("dispatcher_queued_jobs") == 12
    assert metrics.gauge("dispatcher_queue_oldest_ready_age_seconds") == 40.0
    alerts.cfg = AlertsConfig(queued_max=0, oldest_ready_age_s=30, dlq_growth=0)
    with capture_logs() as logs:
        alerts.observe(_backlog(15, queued=12, age_s=45.0))
    alerts.export(metrics)
    assert [a["name"] for a in alerts.active()] == ["oldest_ready_age_s"]
    assert [e["name"] for e in logs if e["event"] == "alert.cleared"] == ["queued_max"]
    assert metrics.gauge("dispatcher_alert_active", name="queued_max") == 0
    text = metrics.render()
    assert text.count("# TYPE dispatcher_alert_active gauge") == 1
    assert 'dispatcher_alert_active{name="oldest_ready_age_s"} 1' in text


@pytest.mark.parametrize("threshold", [0, 0.0])
def test_a_zero_threshold_never_raises(threshold: float) -> None:
    """0 turns an alert off, however large the value."""
    alerts = Alerts(AlertsConfig(queued_max=int(threshold), oldest_ready_age_s=threshold))
    alerts.observe(_backlog(10, queued=10**9, age_s=10**6))
    assert [a["name"] for a in alerts.active()] == []
