"""The watchdog follows every essential loop: a wedged settler is seen, an outage is not."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from dispatcher.config import DeliveryConfig, JobsConfig
from dispatcher.delivery import Worker
from dispatcher.liveness import Liveness
from dispatcher.metrics import Metrics
from dispatcher.queue.keys import Keys
from dispatcher.queue.store import Store
from dispatcher.sender import Sender
from dispatcher.ssrf import AddressPolicy
from tests.helpers import Daemon, daemon_env, eventually, free_port, short_waits, stop_daemons

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import redis.asyncio as aioredis

    from dispatcher import Client
    from tests.target import Target

TOKEN = "liveness-token"  # noqa: S105 - a test token
#: The daemon's liveness.MAX_AGE_S in the wedge test (15 s in production): past any honest gap
#: of its loops (a blocking read is 0.5 s), so only the wedged settler goes stale.
MAX_AGE_S = 3.0


def test_liveness_judges_progress_not_turning() -> None:
    """A loop is stalled only when it neither progressed nor idled within its age; idling
    stops the clock, a failure after idling starts it again."""
    live = Liveness(default_max_age_s=10)
    live.expect("settle")
    live.expect("reclaim", max_age_s=40)
    start = time.monotonic()
    assert set(live.stalled(start + 11)) == {"settle"}
    live.idle("settle")
    assert live.stalled(start + 1000) == {"reclaim": pytest.approx(1000, abs=1)}
    live.wake("settle")  # a failure (or work) after a long idle: the clock starts now
    woke = time.monotonic()
    assert "settle" not in live.stalled(woke + 5)
    assert "settle" in live.stalled(woke + 11)
    live.wake("settle")  # a second failure does not reset a running clock
    assert "settle" in live.stalled(woke + 11)
    live.beat("settle")
    assert "settle" not in live.stalled(time.monotonic() + 5)
    live.forget("reclaim")
    assert live.watched() == ["settle"]


@pytest.fixture
async def quick_worker(redis_url: str, prefix: str, redis: aioredis.Redis) -> AsyncIterator[Worker]:
    """A worker whose loops count as stalled after 1 s without progress."""
    store = Store.open(redis_url, prefix=prefix)
    sender = Sender(
        timeout_s=2.0,
        concurrency=8,
        policy=AddressPolicy(allow_private=True, allowed_cidrs=()),
        user_agent="dispatcher/test",
    )
    await sender.start()
    cfg = DeliveryConfig(timeout_s=2.0, stall_timeout_s=3.0, concurrency=8)
    worker = Worker(
        store, sender, cfg, JobsConfig(), Metrics(), liveness=Liveness(default_max_age_s=1.0)
    )
    task = asyncio.create_task(worker.run(drain_grace_s=1))
    yield worker
    worker.stop.set()
    await asyncio.wait_for(task, timeout=30)
    await sender.close()
    await store.close()


async def test_a_settler_failing_on_every_write_is_stalled_and_recovers(
    quick_worker: Worker, client: Client, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """Outcomes that Redis refuses on every write (here a key of the wrong type) stall the
    settle loop while the other loops go on; once the writes pass again it is healthy."""
    worker = quick_worker
    await client.create_webhook("acme", target.url())
    await client.publish("acme", "a.b", {"n": 1})
    await target.wait_for(1)
    await eventually(lambda: not worker.liveness.stalled(), what="all loops healthy")
    done = Keys(prefix).done
    await redis.delete(done)
    await redis.set(done, "not a sorted set")
    job_id = (await client.publish("acme", "a.b", {"n": 2}))["jobs"][0]["id"]
    await target.wait_for(2)
    stalled = await eventually(worker.liveness.stalled, timeout_s=15, what="a stalled loop")
    assert set(stalled) == {"settle"}, "only the settler is stuck; readers and control turn"
    await redis.delete(done)
    await eventually(lambda: not worker.liveness.stalled(), timeout_s=15, what="recovery")
    job = await client.get_job(job_id)
    assert job is not None
    assert job["state"] == "delivered"


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> list[str]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except BlockingIOError:
            return got


async def _readyz(http: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
    try:
        async with http.get(f"{base}/readyz") as response:
            return response.status, await response.json()
    except aiohttp.ClientError:
        return 0, None


@pytest.mark.slow
async def test_a_wedged_settler_stops_the_watchdog_and_fails_readyz(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    redis: aioredis.Redis,
    client: Client,
    target: Target,
    logs_dir: Path,
) -> None:
    """A daemon whose settle loop cannot write stops petting systemd's watchdog and answers
    /readyz 503 naming the loop (before: the control loop alone kept the watchdog happy)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sock = _listen(tmp_path / "notify")
    env = {
        **daemon_env(redis_url, prefix, admin_listen=f"127.0.0.1:{port}", admin_token=TOKEN),
        **short_waits({"liveness.MAX_AGE_S": MAX_AGE_S}),
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": "400000",
    }
    daemon = Daemon(env, logs_dir / "wedge.log").start()
    try:
        async with aiohttp.ClientSession() as http:
            await eventually(lambda: _readyz(http, base), timeout_s=20)
            await client.create_webhook("acme", target.url())
            done = Keys(prefix).done
            await redis.delete(done)
            await redis.set(done, "not a sorted set")
            job_id = (await client.publish("acme", "a.b", {"n": 1}))["jobs"][0]["id"]
            await target.wait_for(1, timeout_s=20)

            async def stalled() -> Any:
                status, body = await _readyz(http, base)
                return body if status == 503 else None

            body = await eventually(stalled, timeout_s=MAX_AGE_S + 15, what="/readyz 503")
            assert body["error"]["code"] == "loop_stalled"
            assert set(body["stalled"]) == {"settle"}
            assert "settle" in body["error"]["message"]
            _drain(sock)
            await asyncio.sleep(1.0)  # several watchdog periods (0.2 s) go by
            notes = _drain(sock)
            assert "WATCHDOG=1" not in notes
            assert any(note.startswith("STATUS=stalled: settle") for note in notes)
            assert "daemon.loop_stalled" in daemon.log

            await redis.delete(done)
            await eventually(lambda: "WATCHDOG=1" in _drain(sock), timeout_s=20)
            status, _ = await _readyz(http, base)
            assert status == 200
            job = await client.get_job(job_id)
            assert job is not None
            assert job["state"] == "delivered"
    finally:
        await stop_daemons(daemon)
        sock.close()
