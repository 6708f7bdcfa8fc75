"""A ``[regions]`` URL that reaches the wrong Redis, with a real ``dispatcher run``: the config
check compares URLs as text, so another address of this region's own Redis passes it; the relay
must still refuse to queue another region's jobs there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex

from dispatcher import Client
from dispatcher.queue.keys import Keys
from tests.helpers import (
    Daemon,
    RedisServer,
    daemon_env,
    eventually,
    log_events,
    short_waits,
)
from tests.target import Target

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.xdist_group("regions")

PREFIX = "misconf"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("misconf"))
    started.start()
    try:
        yield started
    finally:
        started.stop()


async def test_a_regions_url_reaching_this_regions_own_redis_is_refused(
    server: RedisServer, tmp_path: Path
) -> None:
    """Region a's ``[regions].b`` written as another address of a's own Redis: a's relay does
    not queue b's jobs there (a's daemon delivers none), it logs why, and the jobs wait in a's
    outbox for b, shown by the status."""
    home = server.url  # redis://127.0.0.1:<port>/0
    urls = {"a": home, "b": home.removesuffix("/0")}  # the same Redis, another URL
    env = daemon_env(home, PREFIX, delivery_backoff_base_s="0.05")
    env["DISPATCHER_REGION"] = "a"
    for name, url in urls.items():
        env[f"DISPATCHER_REGIONS_{name.upper()}"] = url
    daemon = Daemon(env, tmp_path / "misconf-a.log").start()
    conn = aioredis.Redis.from_url(home)
    try:
        await eventually(lambda: _signed_in(daemon, conn), timeout_s=30, what="signed in")
        async with (
            Target() as target,
            Client.from_url(home, prefix=PREFIX, region="a", regions=urls) as client,
        ):
            await client.create_webhook("m", target.url("/m"), region="b")
            [job] = (await client.publish("m", "x", {}))["jobs"]
            [refused] = await eventually(
                lambda: [e for e in log_events(daemon, "relay.unavailable") if e["region"] == "b"],
                timeout_s=20,
                what="the relay refusing b's URL",
            )
            assert "region 'a'" in refused["error"]
            counts = await client.status()
            assert counts["regions"]["a"]["outbox"]["b"]["depth"] == 1
            assert target.count("/m") == 0, f"a's daemon delivered b's job {job['id']}"
    finally:
        daemon.stop()
        await conn.aclose()


async def _signed_in(daemon: Daemon, conn: aioredis.Redis) -> bool:
    assert daemon.process is not None
    assert daemon.process.poll() is None, f"the daemon exited: {daemon.log[-2000:]}"
    return bool(await conn.exists(Keys(PREFIX).workers))


async def test_a_regions_redis_restarted_empty_is_recorded_as_its_region_again(
    tmp_path: Path,
) -> None:
    """Region a's Redis restarted empty under a running daemon is recorded as region a's
    again, with a new incarnation: until it is, a publish there runs as in a deployment
    without regions (ids without ``~a``, another region's jobs queued and delivered here)."""
    a, b = RedisServer(tmp_path / "a"), RedisServer(tmp_path / "b")
    a.start()
    b.start()
    env = daemon_env(a.url, PREFIX) | short_waits({"daemon.REGION_CHECK_S": 0.3})
    env |= {"DISPATCHER_REGION": "a", "DISPATCHER_REGIONS_A": a.url, "DISPATCHER_REGIONS_B": b.url}
    daemon = Daemon(env, tmp_path / "a.log").start()
    conn = aioredis.Redis.from_url(a.url, retry_on_error=[rex.ConnectionError])
    try:
        await eventually(lambda: _signed_in(daemon, conn), timeout_s=30, what="signed in")
        before = await conn.hget(Keys(PREFIX).layout, "incarnation")
        a.stop()
        a.start()  # the same port, no append-only file: empty
        await eventually(
            lambda: _recorded(conn, "a"), timeout_s=15, what="a's Redis recorded as region a"
        )
        assert await conn.hget(Keys(PREFIX).layout, "incarnation") not in {None, before}
    finally:
        daemon.stop()
        await conn.aclose()
        a.stop()
        b.stop()


async def _recorded(conn: aioredis.Redis, region: str) -> bool:
    try:
        return await conn.hget(Keys(PREFIX).layout, "region") == region.encode()
    except rex.ConnectionError:
        return False
