"""The embedded Redis's start: a long load is waited out, and a state_dir serves one daemon."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from dispatcher import embedded
from dispatcher.embedded import EmbeddedRedis
from dispatcher.errors import ConfigError
from dispatcher.notify import Notifier
from tests.helpers import Daemon, daemon_env, eventually, log_events, stop_daemons

if TYPE_CHECKING:
    from collections.abc import Iterator

# Writes keys k<ARGV[1]>..k<ARGV[2]> inside Redis: a data set slow to load, made fast.
FILL = "for i = ARGV[1], ARGV[2] do redis.call('SET', 'k' .. i, 'v') end return 1"
KEYS_TO_LOAD = 1_000_000  # about 1 s of AOF replay here; the test checks LOADING was seen


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    # A short path: a unix socket path must stay under about 104 bytes.
    path = Path("/tmp") / f"dspe-{os.getpid()}-{tmp_path.name[-8:]}"  # noqa: S108
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _fill(state_dir: Path, keys: int) -> None:
    """Leave an append-only file with ``keys`` keys in ``state_dir``."""
    server = EmbeddedRedis(state_dir)
    try:
        await server.start()
        conn = aioredis.Redis.from_url(server.url)
        try:
            for first in range(0, keys, 250_000):
                await conn.eval(FILL, 0, first + 1, min(keys, first + 250_000))
        finally:
            await conn.aclose()
    finally:
        await server.stop()


@pytest.mark.slow
async def test_a_load_longer_than_the_start_timeout_is_waited_out(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A server still loading a large AOF is alive: the start waits, extends systemd's start
    timeout, and a second daemon on the same state_dir is refused meanwhile."""
    await _fill(state_dir, KEYS_TO_LOAD)
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.setblocking(False)
    monkeypatch.setattr(embedded, "LOADING_REPORT_S", 0.1)
    server = EmbeddedRedis(state_dir, Notifier({"NOTIFY_SOCKET": str(notify_path)}))
    try:
        starting = asyncio.create_task(server.start(timeout_s=0.3))
        await eventually(lambda: server.loading_seen or starting.done(), interval_s=0.005)
        assert server.loading_seen, "the data set loaded too fast to test a slow load"
        with pytest.raises(ConfigError) as refused:
            await EmbeddedRedis(state_dir).start()
        assert "is locked by another dispatcher" in str(refused.value)
        await starting  # before the fix: "did not answer within 0.3 s", and the server killed
        conn = aioredis.Redis.from_url(server.url)
        try:
            assert await conn.dbsize() == KEYS_TO_LOAD
        finally:
            await conn.aclose()
        notes = []
        while True:
            try:
                notes.append(listener.recv(4096).decode())
            except BlockingIOError:
                break
        assert any("EXTEND_TIMEOUT_USEC=" in note for note in notes)
        assert any("STATUS=loading the embedded Redis data" in note for note in notes)
    finally:
        listener.close()
        await server.stop()


async def test_a_leftover_server_on_the_socket_is_refused(state_dir: Path) -> None:
    """A redis-server already answering on state_dir's socket (loading or not) is never started
    over, even when no daemon holds the lock."""
    first = EmbeddedRedis(state_dir)
    await first.start()
    first._unlock()  # as if its daemon were gone and the child lived on
    try:
        with pytest.raises(ConfigError) as refused:
            await EmbeddedRedis(state_dir).start()
        assert "in use by another running embedded Redis" in str(refused.value)
    finally:
        await first.stop()


async def test_the_lock_is_released_on_stop(state_dir: Path) -> None:
    """After a clean stop the same state_dir starts again at once."""
    for _ in range(2):
        server = EmbeddedRedis(state_dir)
        await server.start()
        await server.stop()


async def test_a_second_daemon_on_the_same_state_dir_exits_2(
    state_dir: Path, logs_dir: Path
) -> None:
    """Two `dispatcher run` on one state_dir: the second exits 2 naming the lock; the first
    goes on serving."""
    first = Daemon(daemon_env("", "lock1", state_dir=str(state_dir)), logs_dir / "lock1.log")
    first.start()
    try:
        await eventually(lambda: "redis.embedded_started" in first.log, timeout_s=20)
        second = Daemon(daemon_env("", "lock2", state_dir=str(state_dir)), logs_dir / "lock2.log")
        code = await asyncio.to_thread(second.start().wait, 20)
        assert code == 2
        assert "is locked by another dispatcher" in second.log
        assert first.process is not None
        assert first.process.poll() is None
    finally:
        first.stop()


async def _maxmemory(server: EmbeddedRedis) -> tuple[str, str]:
    """The server's maxmemory and maxmemory-policy, as CONFIG GET answers them."""
    conn = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        found = await conn.config_get("maxmemory*")
    finally:
        await conn.aclose()
    return str(found["maxmemory"]), str(found["maxmemory-policy"])


async def test_the_embedded_redis_runs_with_the_configured_maxmemory(state_dir: Path) -> None:
    """The embedded redis-server gets 1gb of maxmemory unless told otherwise (0: no limit),
    always with noeviction, so a full Redis refuses publishes instead of evicting jobs."""
    for maxmemory, expected in ((None, str(1024**3)), (64 * 1024**2, str(64 * 1024**2)), (0, "0")):
        server = (
            EmbeddedRedis(state_dir)
            if maxmemory is None
            else EmbeddedRedis(state_dir, maxmemory=maxmemory)
        )
        await server.start()
        try:
            assert await _maxmemory(server) == (expected, "noeviction")
        finally:
            await server.stop()


async def test_a_start_near_maxmemory_says_which_key_to_raise(state_dir: Path) -> None:
    """A state_dir whose data already fills redis.embedded_maxmemory (a limit lowered, or new
    on an old data set) starts with a warning naming the key, since publishes will be refused."""
    await _fill(state_dir, 50_000)  # a few MB
    server = EmbeddedRedis(state_dir, maxmemory=1024**2)
    with capture_logs() as logs:
        await server.start()
    try:
        high = [e for e in logs if e["event"] == "redis.embedded_memory_high"]
        assert len(high) == 1
        assert high[0]["maxmemory"] == 1024**2
        assert high[0]["used_memory"] > 1024**2
        assert "redis.embedded_maxmemory" in high[0]["hint"]
    finally:
        await server.stop()
    roomy = EmbeddedRedis(state_dir)
    with capture_logs() as logs:
        await roomy.start()
    await roomy.stop()
    assert not [e for e in logs if e["event"] == "redis.embedded_memory_high"]


async def test_an_embedded_run_does_not_warn_about_its_own_maxmemory(
    state_dir: Path, logs_dir: Path
) -> None:
    """`dispatcher run` on its embedded Redis applies redis.embedded_maxmemory to it and so no
    longer logs redis.maxmemory_unset about a server it configured itself."""
    env = daemon_env("", "mm", state_dir=str(state_dir), redis_embedded_maxmemory="64mb")
    daemon = Daemon(env, logs_dir / "mm.log").start()
    try:
        await eventually(lambda: "daemon.started" in daemon.log, timeout_s=20)
        assert await _maxmemory(EmbeddedRedis(state_dir)) == (str(64 * 1024**2), "noeviction")
        assert "redis.maxmemory_unset" not in daemon.log
        assert "redis.connected" in daemon.log
    finally:
        await stop_daemons(daemon)


async def test_an_external_redis_without_maxmemory_is_still_warned_about(
    redis_url: str, prefix: str, redis: aioredis.Redis, logs_dir: Path
) -> None:
    """With redis.url set the daemon leaves the server's config alone (embedded_maxmemory does
    not apply) and warns redis.maxmemory_unset when its maxmemory is 0."""
    assert (await redis.config_get("maxmemory"))["maxmemory"] in ("0", b"0")
    env = daemon_env(redis_url, prefix, redis_embedded_maxmemory="64mb")
    daemon = Daemon(env, logs_dir / "external.log").start()
    try:
        await eventually(lambda: "daemon.started" in daemon.log, timeout_s=20)
        assert log_events(daemon, "redis.maxmemory_unset")
        assert (await redis.config_get("maxmemory"))["maxmemory"] in ("0", b"0")
    finally:
        await stop_daemons(daemon)
