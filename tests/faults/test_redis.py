"""Scenarios 3, 4, 5 and 10: Redis itself fails under the daemons while events flow.

Redis is restarted on its append-only file (3), restarted empty (4), frozen (5) and filled up
to ``maxmemory`` (10); a daemon on its embedded Redis is restarted on a large append-only file
that loads slowly (3c). Every scenario ends with the same accounting as the others.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dispatcher.errors import RedisUnavailable
from dispatcher.queue import connection
from dispatcher.queue.keys import Keys
from tests.faults.harness import FULL, SCALE, Scenario
from tests.faults.table import keep
from tests.helpers import eventually, hash_len, short_waits

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.faults.harness import Row

pytestmark = pytest.mark.slow

FAN_OUT = 4  # webhooks of the fan-out tenant in scenario 10


async def _restart_redis(run: Scenario, sig: signal.Signals) -> float:
    """Stop redis-server with ``sig``, keep it down for a seeded while (publishes fail
    meanwhile), then start it again on the same port and directory; returns when it stopped."""
    await asyncio.to_thread(run.redis.stop, sig)
    stopped_at = time.monotonic()
    await asyncio.sleep(run.random.uniform(1.0, 2.0))
    await asyncio.to_thread(run.redis.start)
    return stopped_at


def _signal_redis(run: Scenario, sig: signal.Signals) -> None:
    assert run.redis.process is not None
    run.redis.process.send_signal(sig)


def _check_daemons_rode_it_out(run: Scenario, *events: str) -> None:
    """Every daemon is still running, and their logs show each of ``events``."""
    for daemon in run.daemons:
        assert daemon.process is not None
        assert daemon.process.poll() is None, f"a daemon exited; see {daemon.log_path}"
    logs = "".join(d.log for d in run.daemons)
    for event in events:
        assert f'"{event}"' in logs, f"no {event} in the daemons' logs"


def _check_no_confusion(row: Row, run: Scenario | None = None) -> None:
    """Every target answers 200, so no job may end in the DLQ; and with ``run``, no daemon
    logs an error. A reply handed to the wrong command would show up as a malformed entry, a
    missing record or a crashed delivery."""
    assert not row.dlq, f"jobs dead-lettered: {row.dlq}"
    for daemon in run.daemons if run else []:
        errors = [line for line in daemon.log.splitlines() if '"level":"error"' in line]
        assert not errors, f"{daemon.log_path}: {errors[:3]}"


async def test_redis_sigterm_and_restart_on_its_aof(tmp_path: Path) -> None:
    """Redis shut down (SIGTERM) and restarted on its append-only file while events flow:
    nothing accepted is lost, and publishes during the outage fail fast."""
    async with Scenario("3a Redis SIGTERM, AOF", tmp_path, seed=31) as run:
        async with run.publishing(per_second=150):
            await run.steady(2)
            async with run.fault():
                await _restart_redis(run, signal.SIGTERM)
            await run.steady(2)
        row = await run.settle()
        keep(row)
        assert row.indeterminate > 0, "publishes during the outage fail"
        _check_no_confusion(row, run)
        _check_daemons_rode_it_out(run, "redis.unavailable", "redis.recovered")


async def test_redis_sigkill_and_restart_on_its_aof(tmp_path: Path) -> None:
    """Redis killed (SIGKILL) and restarted on its append-only file while events flow: nothing
    accepted is lost. This Redis runs ``appendfsync always``, so every acknowledged write is on
    disk; with ``everysec`` a process kill loses nothing either (written data sits in the page
    cache), except writes Redis postponed behind a slow fsync, which it acknowledges anyway:
    that, and a machine crash, is the documented window of up to 2 s."""
    async with Scenario("3b Redis SIGKILL, AOF always", tmp_path, seed=32) as run:
        await run.client.store.redis.config_set("appendfsync", "always")
        async with run.publishing(per_second=150):
            await run.steady(2)
            async with run.fault():
                await _restart_redis(run, signal.SIGKILL)
            await run.steady(2)
        row = await run.settle()
        keep(row)
        assert row.indeterminate > 0, "publishes during the outage fail"
        _check_no_confusion(row, run)
        _check_daemons_rode_it_out(run, "redis.unavailable", "redis.recovered")


async def test_redis_restarted_empty(tmp_path: Path) -> None:
    """Redis restarted without its data: the daemons recreate their consumer groups by
    themselves and say so, and every job accepted after the restart is delivered."""
    async with Scenario("4 Redis restarted empty", tmp_path, appendonly=False, seed=4) as run:
        keys = Keys("faults")
        async with run.publishing(per_second=150):
            await run.steady(2)
            async with run.fault():
                wiped_at = await _restart_redis(run, signal.SIGTERM)
                run.forget_before(wiped_at)
                assert await hash_len(run.client.store.redis, keys.webhooks) == 0, "not empty"
                # The operator restores the webhooks (same tenants, URLs and secrets).
                for tenant, path in run.tenants.items():
                    url = run.target.url(path)
                    await run.client.create_webhook(tenant, url, secret=run.secrets[path])
            await run.steady(3)
        row = await run.settle()
        keep(row)
        assert any("lost with Redis's data" in note for note in row.notes)
        wiped = [j for s in run.sent.values() if s.at < wiped_at for j in s.job_ids]
        comeback = [j for j in wiped if await run.client.get_job(j) is not None]
        assert not comeback, f"jobs of the lost data came back half-made: {comeback[:5]}"
        assert row.delivered > 0, "jobs accepted after the restart are delivered"
        _check_no_confusion(row)
        _check_daemons_rode_it_out(run, "queue.group_recreated")


# The socket timeout of the daemons and the publisher: make test shortens it (5 s in
# production, and in make test-faults), so a fault past it is shorter too.
SOCKET_TIMEOUT_S = connection.SOCKET_TIMEOUT_S if FULL else 2.0


@pytest.fixture
def socket_timeout(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of daemons with ``SOCKET_TIMEOUT_S``, and the test's own client set to
    it (connections read it when they are made)."""
    if FULL:
        return {}
    monkeypatch.setattr(connection, "SOCKET_TIMEOUT_S", SOCKET_TIMEOUT_S)
    return short_waits({"queue.connection.SOCKET_TIMEOUT_S": SOCKET_TIMEOUT_S})


def _past_the_socket_timeout(run: Scenario) -> float:
    """A seeded fault length, 0.5 s to 2 s past the socket timeout."""
    return run.random.uniform(SOCKET_TIMEOUT_S + 0.5, SOCKET_TIMEOUT_S + 2.0)


async def test_redis_frozen_by_sigstop(tmp_path: Path, socket_timeout: dict[str, str]) -> None:
    """redis-server stopped (SIGSTOP) past the socket timeout, then continued: nothing waits
    forever, every accepted job's fate checks out, and the daemons keep running."""
    async with Scenario("5a Redis SIGSTOP", tmp_path, seed=51, env=socket_timeout) as run:
        async with run.publishing(per_second=150):
            await run.steady(2)
            async with run.fault():
                _signal_redis(run, signal.SIGSTOP)
                try:
                    await asyncio.sleep(_past_the_socket_timeout(run))  # the fault's length
                finally:
                    _signal_redis(run, signal.SIGCONT)
            await run.steady(2)
        row = await run.settle()
        keep(row)
        assert row.indeterminate > 0, "a publish waiting on the frozen Redis timed out"
        _check_no_confusion(row, run)
        _check_daemons_rode_it_out(run, "redis.unavailable", "redis.recovered")


async def test_redis_paused_by_client_pause(tmp_path: Path, socket_timeout: dict[str, str]) -> None:
    """``CLIENT PAUSE ... ALL`` past the socket timeout: nothing waits forever, every accepted
    job's fate checks out, and the daemons keep running."""
    async with Scenario("5b Redis CLIENT PAUSE ALL", tmp_path, seed=52, env=socket_timeout) as run:
        async with run.publishing(per_second=150):
            await run.steady(2)
            pause_ms = int(_past_the_socket_timeout(run) * 1000)
            async with run.fault():
                assert await run.client.store.redis.client_pause(pause_ms, all=True)  # mode ALL
                await asyncio.sleep(pause_ms / 1000)  # the fault's length
            await run.steady(2)
        row = await run.settle()
        keep(row)
        assert row.indeterminate > 0, "a publish waiting on the paused Redis timed out"
        _check_no_confusion(row, run)
        _check_daemons_rode_it_out(run, "redis.unavailable", "redis.recovered")


async def test_maxmemory_reached(tmp_path: Path) -> None:
    """At ``maxmemory`` publishing is refused with ``redis_oom`` and never half-creates a
    fan-out: every accepted event has all its jobs, nothing arrives for a refused one, and once
    memory is raised again everything accepted is delivered."""
    async with Scenario("10 maxmemory reached", tmp_path, healthy=4, seed=10) as run:
        fan = await run.endpoint("/fan0")
        for i in range(1, FAN_OUT):
            await run.endpoint(f"/fan{i}", tenant=fan)
        redis = run.client.store.redis
        async with run.publishing(per_second=100, tenants=[fan]), run.publishing(per_second=50):
            await run.steady(2)
            async with run.fault():
                used = int((await redis.info("memory"))["used_memory"])
                await redis.config_set("maxmemory", used + 256 * 1024)
                try:
                    await eventually(
                        lambda: run.refused, timeout_s=15, interval_s=0.1, what="a refusal"
                    )
                    await asyncio.sleep(2 * SCALE)  # refusals go on while memory is full
                finally:
                    await redis.config_set("maxmemory", 0)
            await run.steady(2)
        row = await run.settle()
        keep(row)
        assert set(run.refused.values()) == {"redis_oom"}
        fan_jobs = [len(s.job_ids) for s in run.sent.values() if s.tenant == fan]
        assert fan_jobs, "fan-out events were accepted"
        assert set(fan_jobs) == {FAN_OUT}, "every accepted event has all its jobs"
        assert row.refused > 0
        _check_no_confusion(row, run)
        _check_daemons_rode_it_out(run)


# --- 3c: the embedded Redis restarted on a large append-only file -------------------------------

# Writes keys fill:<ARGV[1]>..fill:<ARGV[2]> inside Redis: a data set made fast (no round trips).
FILL = "for i = ARGV[1], ARGV[2] do redis.call('SET', 'fill:' .. i, 'v') end return 1"
FILL_KEYS = 150_000  # with the delay below, a load of about 20 s here (past the start's 15 s)
# make test loads a quarter of them (about 5 s here, at least 1.9 s anywhere) past the start's
# timeout shortened to 1.5 s, with a load report every 0.5 s: the same race, a quarter of the
# wait. make test-faults (FAULTS_FULL=1) runs it as above, with the production values.
SHORT_START = {} if FULL else {"embedded.START_TIMEOUT_S": 1.5, "embedded.LOADING_REPORT_S": 0.5}
# The slowed load (what the issue allows): redis-server sleeps this many microseconds per key
# it loads from the RDB part of the AOF, sleeping rather than spinning on the shared cores,
# and answers -LOADING between every KiB it reads. A real data set that loads this long holds
# about 8M delivered records (issue 14, finding 2).
KEY_LOAD_DELAY_US = 50
QUEUED = 300  # events accepted while the queue is paused, just before the restart


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A short state_dir: a unix socket path must stay under about 104 bytes."""
    path = Path("/tmp") / f"dspf-{os.getpid()}-{tmp_path.name[-8:]}"  # noqa: S108
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _slow_loading_redis(directory: Path) -> dict[str, str]:
    """A PATH whose ``redis-server`` is the real one, loading each key ``KEY_LOAD_DELAY_US``
    slower; the daemon finds it as it finds any redis-server."""
    real = shutil.which("redis-server")
    assert real is not None, "redis-server is not installed"
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "redis-server"
    wrapper.write_text(
        f'#!/bin/sh\nexec {real} "$@" --key-load-delay {KEY_LOAD_DELAY_US} '
        "--loading-process-events-interval-bytes 1024\n"
    )
    wrapper.chmod(0o755)
    return {"PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"}


def _gone(path: Path) -> bool:
    """Whether nothing listens on the embedded Redis's socket any more."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return True
    return False


def _load_seconds(redis_log: Path) -> float | None:
    """How long the last start took to load the append-only file, as Redis logged it."""
    found = re.findall(r"DB loaded from append only file: ([0-9.]+) seconds", redis_log.read_text())
    return float(found[-1]) if found else None


@pytest.mark.timeout(240)
async def test_embedded_redis_restarted_on_a_large_aof(tmp_path: Path, state_dir: Path) -> None:
    """A daemon on its embedded Redis, killed and started again on an append-only file that
    takes longer to load than the start's timeout (15 s; 1.5 s in make test): the start waits
    the load out, and every event accepted before the restart is delivered after it."""
    env = _slow_loading_redis(tmp_path / "bin") | (short_waits(SHORT_START) if SHORT_START else {})
    async with Scenario(
        "3c embedded Redis, long AOF load", tmp_path, daemons=1, state_dir=state_dir, env=env
    ) as run:
        redis = run.client.store.redis
        keys = FILL_KEYS if FULL else FILL_KEYS // 4
        await redis.eval(FILL, 0, 1, keys)
        await redis.bgrewriteaof()  # the keys go to the RDB part, which loads slowly

        async def rewritten() -> bool:
            info = await redis.info("persistence")
            return not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])

        await eventually(rewritten, timeout_s=60, interval_s=0.1, what="the AOF rewrite")
        healthy = [t for t, p in run.tenants.items() if p in run.healthy]
        async with run.publishing(per_second=100):
            await run.steady(2)
            async with run.fault():
                await run.client.pause("default")
                await asyncio.sleep(1.5)  # a pause holds every worker within 1 s (README)
                published = await asyncio.gather(
                    *(run.publish(healthy[n % len(healthy)]) for n in range(QUEUED))
                )
                queued = {j for job_ids in published for j in job_ids}
                run.daemons[0].kill()  # its Redis gets SIGTERM and writes out its AOF
                await eventually(
                    lambda: _gone(state_dir / "redis.sock"),
                    timeout_s=30,
                    what="the embedded Redis stopped with its daemon",
                )
                restarted = run.start_daemon()
                await run.embedded_started(restarted, timeout_s=120)
                started_at = time.monotonic()

                async def resumed() -> bool:
                    try:
                        await run.client.resume("default")
                    except RedisUnavailable:
                        return False
                    return True

                await eventually(resumed, timeout_s=10, interval_s=0.1, what="resume")
            await run.steady(2)
        row = await run.settle()
        load_s = _load_seconds(state_dir / "redis.log")
        row.figures = {
            "keys loaded": keys,
            "AOF load s": "-" if load_s is None else load_s,
            "queued at the restart": len(queued),
        }
        keep(row)

        assert len(queued) == QUEUED, "the events queued before the restart were accepted"
        first_ok: dict[str, float] = {}
        for request, status in zip(run.target.received, run.target.answers, strict=True):
            job_id = request.headers.get("webhook-id", "")
            if job_id in queued and status == 200:
                first_ok.setdefault(job_id, request.at)
        assert set(first_ok) == queued, "every queued event is delivered"
        early = [j for j, at in first_ok.items() if at < started_at]
        assert not early, f"{len(early)} paused jobs went out before the restart"
        assert '"redis.embedded_loading"' in restarted.log, "the start waited out a long load"
        _check_no_confusion(row, run)
