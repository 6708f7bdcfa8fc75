"""Three regions end to end: a ``dispatcher run`` per region, each on its own redis-server, the
regions 40 ms apart each way (tests/regions_kit.py), real HTTP targets.

What a user of regions relies on: a publish answers from its own region without crossing to
another; a webhook's jobs are delivered by its region's daemons; a registry change made in one
region reaches the others.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any, cast

import pytest
import redis.asyncio as aioredis

from dispatcher.errors import NotFound
from dispatcher.ids import region_of
from dispatcher.queue.keys import Keys
from tests.helpers import Daemon, eventually, log_events
from tests.regions_kit import NAMES, Regions3
from tests.target import Target

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dispatcher import Client

pytestmark = [pytest.mark.xdist_group("regions"), pytest.mark.slow]

PUBLISHES = 150
FAST = {
    "delivery_timeout_s": "2",
    "delivery_backoff_base_s": "0.05",
    "delivery_backoff_cap_s": "0.5",
    "log_level": "debug",  # delivery.succeeded, per job, is a debug line
}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regions3]:
    with Regions3(tmp_path_factory.mktemp("regions")) as started:
        yield started


@pytest.fixture(scope="module")
def daemons(kit: Regions3) -> Iterator[dict[str, Daemon]]:
    """One ``dispatcher run`` per region, for every test of the module."""
    started = {
        region: Daemon(kit.env_for(region, FAST), kit.directory / f"daemon-{region}.log").start()
        for region in NAMES
    }
    try:
        yield started
    finally:
        for daemon in started.values():
            daemon.stop()


async def _ready(kit: Regions3, daemons: dict[str, Daemon]) -> None:
    """Every region's daemon has signed in to its own Redis (failing at once if one exited)."""
    for region, daemon in daemons.items():
        conn = aioredis.Redis.from_url(kit.url(region))

        async def signed_in(d: Daemon = daemon, c: aioredis.Redis = conn) -> bool:
            assert d.process is not None
            assert d.process.poll() is None, f"the daemon exited: {d.log[-2000:]}"
            return bool(await c.exists(Keys(kit.prefix).workers))

        try:
            await eventually(signed_in, timeout_s=30, what=f"{region}'s daemon signed in")
        finally:
            await conn.aclose()


async def test_publishes_in_a_never_cross_to_b_or_c(
    kit: Regions3, daemons: dict[str, Daemon]
) -> None:
    """Publishing in region a to a tenant with webhooks in a, b and c sends not one byte to b's
    or c's Redis: the jobs for b and c leave through a's outbox, and every job arrives."""
    await _ready(kit, daemons)
    async with Target() as target, kit.client_in("a") as client:
        for region in NAMES:
            await client.create_webhook("fan", target.url(f"/fan-{region}"), region=region)
        before = {r: kit.carried(r, via="a-client") for r in ("b", "c")}
        took_ms: list[float] = []
        for i in range(PUBLISHES):
            start = time.perf_counter()
            answer = await client.publish("fan", "e2e.fan", {"i": i})
            took_ms.append((time.perf_counter() - start) * 1000)
            assert sorted(region_of(job["id"]) or "" for job in answer["jobs"]) == list(NAMES)
        carried = {r: kit.carried(r, via="a-client") - before[r] for r in ("b", "c")}
        round_trip_ms = 2 * kit.delay_s * 1000
        print(  # a figure, not an assertion: bytes are the proof of local speed
            f"\n{PUBLISHES} publishes in a: median {statistics.median(took_ms):.2f} ms, "
            f"max {max(took_ms):.1f} ms; one round trip to b or c: {round_trip_ms:.0f} ms"
        )
        assert carried == {"b": 0, "c": 0}, "a publish in a touched another region's Redis"
        for region in NAMES:
            await target.wait_for(PUBLISHES, f"/fan-{region}", timeout_s=30)


async def test_a_b_webhook_is_delivered_by_b_daemon_not_a(
    kit: Regions3, daemons: dict[str, Daemon]
) -> None:
    """Jobs for a region-b webhook published in a live in b's Redis and are delivered by b's
    daemon; a's and c's daemons deliver none of them."""
    await _ready(kit, daemons)
    async with Target() as target, kit.client_in("a") as client:
        await client.create_webhook("only-b", target.url("/only-b"), region="b")
        ids = []
        for i in range(20):
            [job] = (await client.publish("only-b", "e2e.b", {"i": i}))["jobs"]
            ids.append(job["id"])
        assert {region_of(job_id) for job_id in ids} == {"b"}
        arrived = await target.wait_for(len(ids), "/only-b", timeout_s=30)
        assert {r.headers["webhook-id"] for r in arrived} == set(ids)

    delivered = await eventually(
        lambda: _delivered_by(daemons, ids)["b"] == set(ids) and _delivered_by(daemons, ids),
        what="b's daemon logging each delivery",
    )
    assert delivered == {"a": set(), "b": set(ids), "c": set()}
    for region in NAMES:
        conn = aioredis.Redis.from_url(kit.url(region))
        try:
            held = [await conn.hexists(Keys(kit.prefix).jobs, job_id) for job_id in ids]
        finally:
            await conn.aclose()
        assert all(held) if region == "b" else not any(held), f"job records in {region}"


def _delivered_by(daemons: dict[str, Daemon], ids: list[str]) -> dict[str, set[str]]:
    """Which of ``ids`` each region's daemon logged as delivered."""
    wanted = set(ids)
    return {
        region: {e["job_id"] for e in log_events(d, "delivery.succeeded")} & wanted
        for region, d in daemons.items()
    }


async def test_a_registry_change_in_c_reaches_a_and_b(
    kit: Regions3, daemons: dict[str, Daemon]
) -> None:
    """A webhook created in region c, then changed, shows up changed in a and b with the same
    version; deleted in c, it is gone from a and b."""
    await _ready(kit, daemons)
    clients = {region: kit.client_in(region) for region in NAMES}
    try:
        hook = await clients["c"].create_webhook("reg", "https://hooks.example.com/one")
        assert hook["region"] == "c", "a webhook belongs to the region that created it"
        changed = "https://hooks.example.com/two"
        await clients["c"].update_webhook(hook["id"], url=changed)
        for region in ("a", "b"):
            await eventually(
                lambda r=region: _has_url(clients[r], hook["id"], changed),
                timeout_s=15,
                what=f"the change reaching {region}",
            )
        assert len(set((await _versions(kit, hook["id"])).values())) == 1

        await clients["c"].delete_webhook(hook["id"])
        for region in ("a", "b"):
            await eventually(
                lambda r=region: _gone_in(clients[r], hook["id"]),
                timeout_s=15,
                what=f"the delete reaching {region}",
            )
    finally:
        for client in clients.values():
            await client.close()


async def _has_url(client: Client, webhook_id: str, url: str) -> bool:
    """Whether ``client``'s region holds a copy of the webhook, with ``url``."""
    try:
        hook = await client.get_webhook(webhook_id)
    except NotFound:
        return False
    return hook["url"] == url


async def _gone_in(client: Client, webhook_id: str) -> bool:
    try:
        await client.get_webhook(webhook_id)
    except NotFound:
        return True
    return False


async def _versions(kit: Regions3, webhook_id: str) -> dict[str, Any]:
    """The webhook's entry in each region's ``versions`` hash."""
    found: dict[str, Any] = {}
    for region in NAMES:
        conn = aioredis.Redis.from_url(kit.url(region))
        try:
            found[region] = await cast("Any", conn.hget(Keys(kit.prefix).versions, webhook_id))
        finally:
            await conn.aclose()
    return found
