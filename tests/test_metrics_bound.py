"""/metrics stays bounded however many webhooks a process delivers to (issue 15, finding 10).

Per-webhook gauges are exported only for webhooks with attempts in flight or a limit cut below
the start, at most ``ENDPOINT_SERIES_MAX`` of them; aggregates count every webhook; and the
traffic state behind them forgets idle webhooks.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from dispatcher.metrics import ENDPOINT_SERIES_MAX, Metrics
from dispatcher.traffic import IDLE_FORGET_S, Pool
from tests.helpers import eventually
from tests.target import Hang

if TYPE_CHECKING:
    from dispatcher import Client
    from tests.conftest import WorkerHarness
    from tests.target import Target

WEBHOOKS = 5_000
BUSIEST = 10  # webhooks with more attempts in flight than the rest
PER_WEBHOOK = ("dispatcher_endpoint_in_flight", "dispatcher_endpoint_limit")


def _series(text: str, name: str) -> dict[str, float]:
    """The samples of one per-webhook family in /metrics text, by webhook id."""
    pattern = re.compile(rf'^{name}{{webhook_id="([^"]+)"}} (\S+)$', re.MULTILINE)
    return {webhook_id: float(value) for webhook_id, value in pattern.findall(text)}


def _gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} missing from /metrics"
    return float(found[1])


def _busy_pool(now: float) -> Pool:
    """A pool whose every webhook has one job in flight, the first ``BUSIEST`` three."""
    pool = Pool(concurrency=256, timeout_s=15.0)
    for n in range(WEBHOOKS):
        endpoint = pool.endpoint(f"wh_{n:05d}")
        for k in range(3 if n < BUSIEST else 1):
            endpoint.begin(f"job_{n}_{k}", now)
            endpoint.sending(f"job_{n}_{k}", now)
    return pool


def test_metrics_show_at_most_the_bound_busiest_first() -> None:
    """With thousands of webhooks in flight, /metrics holds at most ENDPOINT_SERIES_MAX
    per-webhook series per family, the busiest among them, and says how many it left out."""
    now = time.monotonic()
    pool, metrics = _busy_pool(now), Metrics()
    metrics.export_endpoints(pool)
    text = metrics.render()
    in_flight = _series(text, PER_WEBHOOK[0])
    assert len(in_flight) == ENDPOINT_SERIES_MAX
    assert set(_series(text, PER_WEBHOOK[1])) == set(in_flight)
    assert {f"wh_{n:05d}" for n in range(BUSIEST)} <= set(in_flight)
    assert in_flight["wh_00000"] == 3
    assert _gauge(text, "dispatcher_endpoints_tracked") == WEBHOOKS
    assert _gauge(text, "dispatcher_endpoints_busy") == WEBHOOKS
    assert _gauge(text, "dispatcher_endpoints_limited") == 0
    assert _gauge(text, "dispatcher_endpoint_series_omitted") == WEBHOOKS - ENDPOINT_SERIES_MAX
    assert len(text.splitlines()) < 3 * ENDPOINT_SERIES_MAX, "no other series grows per webhook"


def test_series_of_webhooks_that_calm_down_disappear_and_idle_ones_are_forgotten() -> None:
    """Once a webhook's attempts end well its series go at the next export, a webhook whose
    limit was cut keeps them while it is tracked, and after IDLE_FORGET_S without work the
    pool forgets every webhook, so neither /metrics nor the process's memory keeps them."""
    now = time.monotonic()
    pool, metrics = _busy_pool(now), Metrics()
    metrics.export_endpoints(pool)
    for n in range(WEBHOOKS):
        endpoint = pool.endpoint(f"wh_{n:05d}")
        troubled = n == WEBHOOKS - 1  # timed out: its limit is halved
        for job_id in list(endpoint.started):
            endpoint.end(job_id, 0.01, answered=not troubled, ok=not troubled)
    metrics.export_endpoints(pool)
    text = metrics.render()
    assert _series(text, PER_WEBHOOK[0]) == {f"wh_{WEBHOOKS - 1:05d}": 0}
    assert _series(text, PER_WEBHOOK[1]) == {f"wh_{WEBHOOKS - 1:05d}": pool.start // 2}
    assert _gauge(text, "dispatcher_endpoints_tracked") == WEBHOOKS
    assert _gauge(text, "dispatcher_endpoints_busy") == 0
    assert _gauge(text, "dispatcher_endpoints_limited") == 1
    assert _gauge(text, "dispatcher_endpoint_series_omitted") == 0

    assert pool.forget_idle(now + IDLE_FORGET_S / 2) == 0
    assert pool.forget_idle(now + IDLE_FORGET_S + 1) == WEBHOOKS
    assert not pool.endpoints
    metrics.export_endpoints(pool)
    text = metrics.render()
    assert PER_WEBHOOK[0] not in text
    assert PER_WEBHOOK[1] not in text
    assert _gauge(text, "dispatcher_endpoints_tracked") == 0


def test_a_webhook_with_work_in_flight_is_never_forgotten() -> None:
    """An endpoint with an attempt out (a hang) stays tracked however long it lasts, so its
    limit and its stuck attempts are still accounted for when the attempt ends."""
    now = time.monotonic()
    pool = Pool(concurrency=256, timeout_s=15.0)
    pool.endpoint("wh_hang").begin("job_1", now)
    pool.endpoint("wh_done").begin("job_2", now)
    pool.endpoint("wh_done").end("job_2", 0.01, answered=True, ok=True)
    assert pool.forget_idle(now + 10 * IDLE_FORGET_S) == 1
    assert set(pool.endpoints) == {"wh_hang"}


async def test_a_worker_exports_only_its_troubled_webhooks(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """A running worker keeps per-webhook gauges for a webhook whose attempt timed out (its
    limit was cut) and none for webhooks delivered to quickly; the aggregate gauges count all
    of them."""
    target.script("/hang", Hang())
    bad = await client.create_webhook("bad", target.url("/hang"))
    good = [await client.create_webhook(f"ok{i}", target.url(f"/ok{i}")) for i in range(3)]
    for tenant in ("bad", "ok0", "ok1", "ok2"):
        await client.publish(tenant, "order.created", {"n": 1})
    await workers.start(timeout_s=1.0, max_attempts=1)
    metrics = workers.metrics
    await eventually(
        lambda: (
            metrics.gauge("dispatcher_endpoints_limited") == 1
            and metrics.gauge("dispatcher_endpoints_busy") == 0
        ),
        what="the timed-out attempt ended and its webhook's limit cut",
    )
    text = metrics.render()
    assert _series(text, PER_WEBHOOK[0]) == {bad["id"]: 0}
    assert set(_series(text, PER_WEBHOOK[1])) == {bad["id"]}
    assert _gauge(text, "dispatcher_endpoints_tracked") == 1 + len(good)
    assert all(target.count(f"/ok{i}") == 1 for i in range(len(good)))
