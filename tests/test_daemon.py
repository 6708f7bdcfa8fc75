"""Real ``dispatcher run`` processes: kill -9, SIGSTOP, SIGTERM, embedded Redis, bad config."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from standardwebhooks.webhooks import Webhook as Verifier

from dispatcher import Client, embedded, shapes
from dispatcher.errors import ConfigError
from dispatcher.queue.keys import Keys
from tests.helpers import Daemon, daemon_env, eventually, stop_daemons
from tests.target import Reply, Target

FAST = {
    "delivery_timeout_s": "1",
    "delivery_stall_timeout_s": "2",
    "delivery_backoff_base_s": "0.05",
    "delivery_backoff_cap_s": "0.5",
    "delivery_max_attempts": "20",
}


async def _states(client: Client, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for start in range(0, len(ids), 200):
        jobs = await asyncio.gather(*(client.get_job(i) for i in ids[start : start + 200]))
        for job in jobs:
            state = job["state"] if job else "missing"
            counts[state] = counts.get(state, 0) + 1
    return counts


async def _all_delivered(client: Client, ids: list[str]) -> dict[str, int] | None:
    counts = await _states(client, ids)
    return counts if counts.get("delivered") == len(ids) else None


@pytest.mark.slow
async def test_sigkill_mid_delivery_loses_nothing(
    client: Client, redis_url: str, prefix: str, target: Target, logs_dir: Path
) -> None:
    """2,000 events to 20 webhooks, one of two workers SIGKILLed 5 times: every job is delivered."""
    hooks = [await client.create_webhook(f"t{i}", target.url(f"/h{i}")) for i in range(20)]
    for i in range(20):
        target.script(f"/h{i}", Reply(200, delay_s=0.01))
    env = daemon_env(redis_url, prefix, delivery_concurrency="32", **FAST)
    steady = Daemon(env, logs_dir / "steady.log").start()
    victim = Daemon(env, logs_dir / "victim-0.log").start()
    ids: list[str] = []
    try:
        for n in range(2000):
            answer = await client.publish(f"t{n % 20}", "order.created", {"n": n})
            ids += [j["id"] for j in answer["jobs"]]
            if n % 400 == 399:  # five kills, each while deliveries are under way
                await target.wait_for(len(ids) // 2, timeout_s=30)
                victim.kill()
                victim = Daemon(env, logs_dir / f"victim-{n}.log").start()
        assert len(ids) == 2000
        counts = await eventually(lambda: _all_delivered(client, ids), timeout_s=90, interval_s=0.5)
    finally:
        await stop_daemons(victim, steady)
    arrived = [r.headers["webhook-id"] for r in target.received]
    assert set(arrived) == set(ids), "every job arrived at least once"
    duplicates = len(arrived) - len(set(arrived))
    print(
        f"\nSIGKILL x5: {len(ids)} jobs, {len(arrived)} requests, {duplicates} duplicates, {counts}"
    )
    secrets = {h["id"]: h["secret"] for h in hooks}
    by_path = {f"/h{i}": hooks[i]["id"] for i in range(20)}
    for r in target.received[:200]:
        Verifier(secrets[by_path[r.path]]).verify(r.body, dict(r.headers))


@pytest.mark.slow
async def test_sigstopped_worker_is_taken_over_and_its_late_result_refused(
    client: Client,
    redis: aioredis.Redis,
    redis_url: str,
    prefix: str,
    target: Target,
    logs_dir: Path,
) -> None:
    """Past the stall timeout a frozen worker's job goes to another; its late result is refused."""
    env = daemon_env(
        redis_url,
        prefix,
        delivery_timeout_s="2",
        delivery_stall_timeout_s="3",
        delivery_backoff_base_s="0.05",
    )
    target.script("/hook", Reply(200, delay_s=1.0), Reply(200))
    await client.create_webhook("acme", target.url())
    frozen = Daemon(env, logs_dir / "frozen.log").start()
    rescuer: Daemon | None = None
    try:
        await asyncio.sleep(1.0)  # let it start and block on the stream
        job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
        first = (await target.wait_for(1))[0]
        assert first.headers["webhook-id"] == job_id
        frozen.signal(signal.SIGSTOP)
        rescuer = Daemon(env, logs_dir / "rescuer.log").start()
        await target.wait_for(2, timeout_s=20)
        job = await eventually(lambda: _delivered_by_second(client, job_id), timeout_s=10)
        frozen.signal(signal.SIGCONT)
        await eventually(lambda: "job.stale_result_rejected" in frozen.log, timeout_s=15)
        job = await eventually(lambda: _late_logged(client, job_id), timeout_s=5)
        assert job["state"] == "delivered"
        assert job["stalls"] == 1
        assert await redis.zcard(Keys(prefix).delayed("default")) == 0
        assert "job.reclaimed" in rescuer.log
    finally:
        await stop_daemons(frozen, rescuer)


async def _delivered_by_second(client: Client, job_id: str) -> shapes.Job | None:
    job = await client.get_job(job_id)
    return job if job and job["state"] == "delivered" else None


async def _late_logged(client: Client, job_id: str) -> shapes.Job | None:
    job = await client.get_job(job_id)
    return job if job and any(a.get("late") for a in job["attempts"]) else None


async def test_sigterm_finishes_in_flight_then_exits_zero(
    client: Client, redis_url: str, prefix: str, target: Target, logs_dir: Path
) -> None:
    """SIGTERM stops taking work, lets the in-flight request finish and record, and exits 0."""
    env = daemon_env(redis_url, prefix, delivery_timeout_s="5", delivery_stall_timeout_s="10")
    target.script("/hook", Reply(200, delay_s=1.5))
    await client.create_webhook("acme", target.url())
    daemon = Daemon(env, logs_dir / "term.log").start()
    try:
        job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
        await target.wait_for(1, timeout_s=10)
        daemon.signal(signal.SIGTERM)
        code = await asyncio.to_thread(daemon.wait, 20)
    finally:
        daemon.stop()
    assert code == 0
    job = await client.get_job(job_id)
    assert job is not None
    assert job["state"] == "delivered", daemon.log
    later = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await asyncio.sleep(0.5)
    later_job = await client.get_job(later) or dict[str, Any]()
    assert later_job.get("state") == "queued"  # nobody took it


async def test_sigterm_leaves_unfinished_work_for_another_worker(
    client: Client, redis_url: str, prefix: str, target: Target, logs_dir: Path
) -> None:
    """A request outliving the drain grace is left pending, and another worker delivers the job."""
    env = daemon_env(redis_url, prefix, delivery_timeout_s="2", delivery_stall_timeout_s="3")
    target.script("/hook", Reply(200, delay_s=30), Reply(200))
    await client.create_webhook("acme", target.url())
    first = Daemon(
        {**env, "DISPATCHER_DELIVERY_TIMEOUT_S": "30", "DISPATCHER_DELIVERY_STALL_TIMEOUT_S": "31"},
        logs_dir / "first.log",
    )
    first.start()
    second: Daemon | None = None
    try:
        job_id = (await client.publish("acme", "a.b", {}))["jobs"][0]["id"]
        await target.wait_for(1, timeout_s=10)
        # The daemon's grace is its attempt timeout; SIGKILL after SIGTERM stands in for
        # systemd's TimeoutStopSec when the grace is exceeded.
        first.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        first.kill()
        job = await client.get_job(job_id)
        assert job is not None
        assert job["state"] == "active"  # still claimed, never acknowledged
        second = Daemon(env, logs_dir / "second.log").start()
        await eventually(lambda: _delivered_by_second(client, job_id), timeout_s=40)
    finally:
        await stop_daemons(first, second)


async def test_embedded_redis_serves_and_stops_with_the_daemon(
    tmp_path: Path, target: Target, logs_dir: Path
) -> None:
    """With no redis.url the daemon runs its own redis-server (unix socket, AOF), and stops it."""
    # Not tmp_path: a unix socket path must stay under ~104 bytes, and tmp_path can be longer.
    state_dir = Path("/tmp") / f"dsp-{os.getpid()}-{tmp_path.name[-8:]}"  # noqa: S108
    env = daemon_env("", "emb", state_dir=str(state_dir))
    env.pop("DISPATCHER_REDIS_URL")
    daemon = Daemon(env, logs_dir / "embedded.log").start()
    socket_path = state_dir / "redis.sock"
    try:
        await eventually(lambda: "daemon.started" in daemon.log, timeout_s=20)
        async with Client.from_url(f"unix://{socket_path}", prefix="emb") as client:
            await client.create_webhook("acme", target.url())
            job_id = (await client.publish("acme", "a.b", {"hello": "embedded"}))["jobs"][0]["id"]
            [req] = await target.wait_for(1, timeout_s=10)
            assert orjson.loads(req.body) == {"hello": "embedded"}
            await eventually(lambda: _delivered_by_second(client, job_id))
            conn = aioredis.Redis(unix_socket_path=str(socket_path))
            assert (await conn.config_get("appendonly"))["appendonly"] in ("yes", b"yes")
            await conn.aclose()
        daemon.signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 20) == 0
        assert not socket_path.exists() or not await _answers(socket_path)
        assert list(state_dir.glob("appendonly*"))
    finally:
        daemon.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


async def _answers(socket_path: Path) -> bool:
    try:
        conn = aioredis.Redis(unix_socket_path=str(socket_path), socket_connect_timeout=0.5)
        await conn.ping()
        await conn.aclose()
    except Exception:
        return False
    return True


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    """check-config exits 2 with one line per problem, and 0 with the redacted config when valid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    bad = subprocess.run(
        [sys.executable, "-m", "dispatcher", "check-config"],
        env={
            **env,
            "DISPATCHER_DELIVERY_TIMEOUT_S": "soon",
            "DISPATCHER_DELIVERY_CONCURRENCY": "0",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("delivery.timeout_s" in line for line in lines)
    assert any("delivery.concurrency" in line for line in lines)
    good = subprocess.run(
        [sys.executable, "-m", "dispatcher", "check-config", "--config", "etc/dispatcher.toml"],
        env={
            **env,
            "DISPATCHER_ADMIN_TOKEN": "s3cret",
            "DISPATCHER_REDIS_URL": "redis://:pw@localhost:6379/0",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert good.returncode == 0, good.stderr
    shown = orjson.loads(good.stdout)
    assert shown["admin"]["token"] == "***"  # noqa: S105 - the redaction mark, not a secret
    assert "pw" not in good.stdout
    assert "s3cret" not in good.stdout


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    """dispatcher run exits 2 on a stall timeout not above the attempt timeout, naming both keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "run"],
        env={
            **env,
            "DISPATCHER_DELIVERY_TIMEOUT_S": "30",
            "DISPATCHER_DELIVERY_STALL_TIMEOUT_S": "20",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "stall_timeout_s" in result.stderr


async def test_missing_redis_server_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a redis-server binary the embedded start fails with install advice (CLI: exit 2)."""
    monkeypatch.setattr(embedded, "find_redis_server", lambda: None)
    with pytest.raises(ConfigError) as caught:
        await embedded.EmbeddedRedis(tmp_path).start()
    assert "apt-get install redis-server" in str(caught.value)
    assert "redis.url" in str(caught.value)


async def test_refuses_redis_that_may_evict(
    redis: aioredis.Redis, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """The daemon refuses to start on a Redis whose maxmemory-policy could evict queued jobs."""
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        daemon = Daemon(daemon_env(redis_url, prefix), logs_dir / "evict.log").start()
        code = await asyncio.to_thread(daemon.wait, 20)
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")
    assert code == 2
    assert "noeviction" in daemon.log


async def test_embedded_redis_crash_stops_the_daemon_with_an_error(
    tmp_path: Path, logs_dir: Path
) -> None:
    """If the embedded redis-server dies the daemon logs it and exits 1, for systemd to restart."""
    state_dir = Path("/tmp") / f"dspc-{os.getpid()}-{tmp_path.name[-8:]}"  # noqa: S108 - short path
    env = daemon_env("", "crash", state_dir=str(state_dir))
    env.pop("DISPATCHER_REDIS_URL")
    daemon = Daemon(env, logs_dir / "crash.log").start()
    try:
        await eventually(lambda: "redis.embedded_started" in daemon.log, timeout_s=20)
        pid = orjson.loads(
            next(line for line in daemon.log.splitlines() if "redis.embedded_started" in line)
        )["pid"]
        os.kill(pid, signal.SIGKILL)
        assert await asyncio.to_thread(daemon.wait, 30) == 1
        assert "redis.embedded_exited" in daemon.log
    finally:
        daemon.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
