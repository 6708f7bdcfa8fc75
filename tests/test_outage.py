"""Redis going away under a running daemon, Redis out of memory, and the Redis clock."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import pytest

from dispatcher import Client, RedisOutOfMemory, RedisUnavailable
from dispatcher.queue.clock import RedisClock
from dispatcher.queue.keys import Keys
from dispatcher.queue.store import Store
from tests.helpers import (
    Daemon,
    RedisServer,
    daemon_env,
    eventually,
    hash_len,
    short_waits,
    stop_daemons,
)
from tests.target import Reply

if TYPE_CHECKING:
    from pathlib import Path

    from tests.target import Target


async def _delivered(client: Client, ids: list[str]) -> bool:
    jobs = await asyncio.gather(*(client.get_job(i) for i in ids))
    return all(j is not None and j["state"] == "delivered" for j in jobs)


@pytest.mark.slow
async def test_redis_restart_with_aof_loses_nothing(
    tmp_path: Path, target: Target, logs_dir: Path
) -> None:
    """Redis stopped and restarted on its append-only file while events flow: all are delivered."""
    server = RedisServer(tmp_path / "aof", appendonly=True)
    server.start()
    env = daemon_env(
        server.url,
        "outage",
        delivery_timeout_s="2",
        delivery_stall_timeout_s="3",
        delivery_backoff_base_s="0.05",
    )
    daemon = Daemon(env, logs_dir / "outage.log").start()
    ids: list[str] = []
    try:
        async with Client.from_url(server.url, prefix="outage") as client:
            await client.create_webhook("acme", target.url())
            for n in range(200):
                ids += [j["id"] for j in (await client.publish("acme", "a.b", {"n": n}))["jobs"]]
            await target.wait_for(50)
            server.stop(signal.SIGTERM)  # a clean shutdown writes the AOF
            with pytest.raises(RedisUnavailable):
                await client.publish("acme", "a.b", {"n": -1})
            await asyncio.sleep(1.0)
            server.start()
            for n in range(200, 300):
                ids += [j["id"] for j in (await client.publish("acme", "a.b", {"n": n}))["jobs"]]
            await eventually(lambda: _delivered(client, ids), timeout_s=30, interval_s=0.3)
        arrived = {r.headers["webhook-id"] for r in target.received}
        assert set(ids) <= arrived
        assert daemon.process is not None
        assert daemon.process.poll() is None, "the daemon rode out the outage"
        assert "redis.unavailable" in daemon.log
        assert "redis.recovered" in daemon.log
    finally:
        await stop_daemons(daemon)
        server.stop()


async def test_out_of_memory_publish_is_refused_whole(tmp_path: Path) -> None:
    """At maxmemory, publish raises RedisOutOfMemory and leaves no part of the fan-out behind."""
    server = RedisServer(tmp_path / "oom")
    server.start()
    try:
        async with Client.from_url(server.url, prefix="oom") as client:
            for i in range(5):
                await client.create_webhook("acme", f"https://hooks.example.com/{i}")
            store = client.store
            used = int((await store.redis.info("memory"))["used_memory"])
            await store.redis.config_set("maxmemory", used - 1024)  # already over the limit
            ready_before = await store.redis.xlen(Keys("oom").ready("default"))
            with pytest.raises(RedisOutOfMemory) as caught:
                await client.publish("acme", "a.b", {"n": 1})
            assert caught.value.code == "redis_oom"
            assert await store.redis.xlen(Keys("oom").ready("default")) == ready_before
            assert await hash_len(store.redis, Keys("oom").jobs) == 0
    finally:
        server.stop()


async def test_clock_follows_the_redis_server(redis_url: str, prefix: str) -> None:
    """The shared clock reads the Redis server's time, not the host's, within a few milliseconds."""
    store = Store.open(redis_url, prefix=prefix)
    try:
        clock = RedisClock()
        await clock.sync(store.redis)
        seconds, micros = await store.redis.time()
        server_ms = seconds * 1000 + micros // 1000
        assert abs(clock.now_ms() - server_ms) < 50
        clock._offset_ms -= 60_000  # as if the host clock had been a minute behind
        moved = await clock.sync(store.redis)
        assert 59 < moved < 61
    finally:
        await store.close()


@pytest.mark.slow
async def test_sigterm_while_redis_is_down_exits_and_loses_nothing(
    tmp_path: Path, target: Target, logs_dir: Path
) -> None:
    """SIGTERM during an outage exits 0 in bounded time; the unrecorded job is delivered again."""
    server = RedisServer(tmp_path / "down", appendonly=True)
    server.start()
    env = daemon_env(server.url, "down", delivery_timeout_s="3", delivery_stall_timeout_s="4")
    env |= short_waits({"settler.SETTLE_DRAIN_S": 1.0})  # 10 s in production, waited out here
    target.script("/hook", Reply(200, delay_s=1.0), Reply(200))
    first = Daemon(env, logs_dir / "first.log").start()
    second: Daemon | None = None
    try:
        async with Client.from_url(server.url, prefix="down") as client:
            await client.create_webhook("acme", target.url())
            job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
            await target.wait_for(1)
            server.stop(signal.SIGTERM)  # the answer arrives while Redis is gone
            first.signal(signal.SIGTERM)
            assert await asyncio.to_thread(first.wait, 40) == 0
            assert "worker.outcomes_unwritten" in first.log
            server.start()
            second = Daemon(env, logs_dir / "second.log").start()
            await eventually(lambda: _delivered(client, [job_id]), timeout_s=30, interval_s=0.3)
        assert target.count() >= 2  # delivered again: at least once, never lost
    finally:
        await stop_daemons(first, second)
        server.stop()


def test_a_redis_server_whose_port_is_taken_does_not_start(tmp_path: Path, redis_url: str) -> None:
    """A test's redis-server that cannot bind its port (another xdist worker's server took it)
    fails to start, rather than the test going on against the other worker's server."""
    taken = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    server = RedisServer(tmp_path / "taken", port=taken)
    try:
        with pytest.raises(RuntimeError, match=f"redis-server on {taken}"):
            server.start()
    finally:
        server.stop()
