"""Regions in the status, the backlog alerts and the daemon's start (issue 22), against three
real redis-servers as regions a, b and c (a is the session's), each set up as its region."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs

from dispatcher.alerts import Alerts
from dispatcher.config import AlertsConfig
from dispatcher.daemon import EXIT_CONFIG
from dispatcher.ids import sid_ms
from dispatcher.metrics import Metrics
from dispatcher.queue.backlog import measure
from dispatcher.queue.regions import Regions
from dispatcher.queue.status import outbox_counts, region_counts
from dispatcher.queue.store import Store
from tests.helpers import Daemon, RedisServer, daemon_env, free_port, log_events

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    import redis.asyncio as aioredis

pytestmark = pytest.mark.xdist_group("regions")

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RedisServer]]:
    """Regions b and c's redis-servers (a's is the session's), for the whole module."""
    found = {name: RedisServer(tmp_path_factory.mktemp(f"region-{name}")) for name in NAMES[1:]}
    for server in found.values():
        server.start()
    yield found
    for server in found.values():
        server.stop()


@pytest.fixture
def urls(redis_url: str, servers: dict[str, RedisServer]) -> dict[str, str]:
    return {"a": redis_url, **{name: server.url for name, server in servers.items()}}


@pytest.fixture
async def stores(
    urls: dict[str, str], prefix: str, redis: aioredis.Redis
) -> AsyncIterator[dict[str, Store]]:
    """Each region's store under this test's prefix, set up as that region (as its daemon
    does at start); ``redis`` deletes a's keys after the test (b and c's go with the module)."""
    opened = {name: Store.open(url, prefix=prefix) for name, url in urls.items()}
    for name, store in opened.items():
        await store.adopt_region(name, NAMES)
    yield opened
    for store in opened.values():
        await store.close()


async def _outbox_entry(store: Store, destination: str, n: int) -> str:
    """One job published in ``store``'s region for ``destination``, as publish.lua writes it
    (keys.py: ``P:{k}:outbox:R``); its stream id."""
    entry_id = await store.redis.xadd(
        store.keys.outbox(destination),
        {
            "j": f"job_0000000000000000000{n}.1~{destination}",
            "w": "wh_00000000000000000000",
            "t": "acme",
            "e": "order.created",
            "q": "default",
            "c": "0",
            "n": "0",
            "p": f'{{"n": {n}}}',
        },
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


async def test_region_counts_show_every_region_with_its_outboxes(
    stores: dict[str, Store], urls: dict[str, str]
) -> None:
    """The status of a deployment with regions shows each region, home first, reachable, with
    the depth of each of its outboxes and how long the oldest entry has waited."""
    first = await _outbox_entry(stores["a"], "b", 1)
    await _outbox_entry(stores["a"], "b", 2)
    await _outbox_entry(stores["a"], "c", 3)
    await _outbox_entry(stores["b"], "c", 4)
    regions = Regions(stores["a"], "a", urls)
    try:
        counts = await region_counts(regions)
    finally:
        await regions.close()
    assert list(counts) == ["a", "b", "c"]
    assert all(region["reachable"] for region in counts.values())
    assert {name: region["queued"] for name, region in counts.items()} == dict.fromkeys(NAMES, 0)
    a_outbox = counts["a"]["outbox"]
    assert {dest: box["depth"] for dest, box in a_outbox.items()} == {"b": 2, "c": 1}
    lag_ms = a_outbox["b"]["lag_ms"]
    now_ms = (await stores["a"].refresh_clock()).now_ms()
    assert lag_ms is not None
    assert 0 <= lag_ms <= now_ms - sid_ms(first)
    b_outbox = counts["b"]["outbox"]
    assert b_outbox["a"] == {"depth": 0, "lag_ms": None}
    assert b_outbox["c"]["depth"] == 1
    assert counts["c"]["outbox"] == {
        "a": {"depth": 0, "lag_ms": None},
        "b": {"depth": 0, "lag_ms": None},
    }


async def test_a_region_that_does_not_answer_is_shown_unreachable(
    stores: dict[str, Store], urls: dict[str, str], servers: dict[str, RedisServer]
) -> None:
    """A frozen region's Redis (SIGSTOP) and one nobody listens for answer ``reachable:
    false`` with the reason, within about a second, while the others still show."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    regions = Regions(stores["a"], "a", {**urls, "d": dead})
    frozen = servers["c"].process
    assert frozen is not None
    frozen.send_signal(signal.SIGSTOP)
    try:
        async with asyncio.timeout(5):  # far above the 1 s each region gets
            counts = await region_counts(regions)
    finally:
        frozen.send_signal(signal.SIGCONT)
        await regions.close()
    assert list(counts) == ["a", "b", "c", "d"]
    assert counts["a"]["reachable"]
    assert counts["b"]["reachable"]
    assert counts["c"] == {"reachable": False, "error": "no answer within 1 s"}
    assert counts["d"]["reachable"] is False
    assert "connecting to 127.0.0.1" in counts["d"]["error"]


async def test_the_backlog_alerts_count_the_outboxes(stores: dict[str, Store]) -> None:
    """Jobs waiting in an outbox count toward queued_max, the oldest one's age toward
    oldest_ready_age_s, and each destination gets its outbox gauges."""
    first = await _outbox_entry(stores["a"], "b", 1)
    await _outbox_entry(stores["a"], "b", 2)
    await _outbox_entry(stores["a"], "c", 3)
    backlog = await measure(stores["a"])
    assert (backlog.queued, backlog.outbox) == (0, 3)
    assert (backlog.oldest_ready_ms, backlog.oldest_queue) == (sid_ms(first), "outbox:b")
    alerts, metrics = Alerts(AlertsConfig(queued_max=3)), Metrics()
    with capture_logs() as logs:
        alerts.observe(backlog)
    alerts.export(metrics)
    assert [a["name"] for a in alerts.active()] == ["queued_max"]
    assert [e["name"] for e in logs if e["event"] == "alert.raised"] == ["queued_max"]
    assert metrics.gauge("dispatcher_queued_jobs") == 3
    assert metrics.gauge("dispatcher_outbox_jobs", region="b") == 2
    assert metrics.gauge("dispatcher_outbox_jobs", region="c") == 1
    age_s = metrics.gauge("dispatcher_outbox_oldest_age_seconds", region="b")
    assert age_s is not None
    assert age_s >= 0


async def test_without_regions_nothing_of_them_is_measured(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> None:
    """A Redis that is no region has no outboxes to count: empty answers, no gauges."""
    store = Store.open(redis_url, prefix=prefix)
    try:
        backlog = await measure(store)
        assert (backlog.outboxes, backlog.outbox) == ({}, 0)
        assert await outbox_counts(store) == {}
        assert await region_counts(Regions.single(store)) == {}
        metrics = Metrics()
        alerts = Alerts(AlertsConfig())
        alerts.observe(backlog)
        alerts.export(metrics)
        assert not [key for key in metrics.gauges if key[0].startswith("dispatcher_outbox")]
    finally:
        await store.close()


def test_a_daemon_without_regions_refuses_a_regions_redis(
    stores: dict[str, Store], urls: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    """A daemon with no [regions] on a Redis recorded as region a's exits 2, saying so: its
    publishes would fill outboxes that nothing relays."""
    daemon = Daemon(daemon_env(urls["a"], prefix), tmp_path / "missing.log").start()
    try:
        assert daemon.wait() == EXIT_CONFIG
    finally:
        daemon.stop()
    [line] = log_events(daemon, "daemon.region_missing")
    assert line["redis_region"] == "a"
    assert "has no [regions]" in line["problem"]


def test_the_daemon_refuses_another_regions_redis(
    stores: dict[str, Store], urls: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    """A daemon configured as region a whose URL is region b's Redis exits 2, saying so."""
    swapped = {"regions_a": urls["b"], "regions_b": urls["a"], "regions_c": urls["c"]}
    env = daemon_env(urls["b"], prefix, region="a", **swapped)
    daemon = Daemon(env, tmp_path / "mismatch.log").start()
    try:
        assert daemon.wait() == EXIT_CONFIG
    finally:
        daemon.stop()
    [line] = log_events(daemon, "daemon.region_mismatch")
    assert (line["region"], line["redis_region"]) == ("a", "b")
    assert "this Redis is region 'b''s" in line["problem"]
