"""systemd integration: the notify protocol on a socket the test opens, and the unit files."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatcher.notify import Notifier
from tests.helpers import Daemon, daemon_env

UNITS = Path(__file__).parent.parent / "systemd"


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def _messages(sock: socket.socket, *, until: str, timeout_s: float = 20) -> list[str]:
    """Datagrams received until one contains ``until`` (AssertionError at the deadline)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} within {timeout_s} s; got {got}")


def test_notifier_speaks_the_protocol(tmp_path: Path) -> None:
    """READY, STATUS, WATCHDOG and STOPPING arrive as datagrams on $NOTIFY_SOCKET."""
    with _listen(tmp_path / "notify") as sock:
        notifier = Notifier(
            {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "30000000"}
        )
        assert notifier.watchdog_interval_s == 15.0
        assert notifier.ready("serving")
        assert notifier.watchdog()
        assert notifier.stopping()
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"


def test_notifier_is_silent_outside_systemd() -> None:
    """Without $NOTIFY_SOCKET nothing is sent or fails; another pid's watchdog is ignored."""
    quiet = Notifier({})
    assert not quiet.enabled
    assert not quiet.ready("x")
    other = Notifier(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    )
    assert other.watchdog_interval_s is None
    assert not other.ready("x")  # the socket is missing: False, no exception


@pytest.mark.slow
async def test_daemon_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """Under Type=notify the daemon sends READY=1, WATCHDOG=1, then STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify"
    with _listen(path) as sock:
        env = {
            **daemon_env(redis_url, prefix),
            "NOTIFY_SOCKET": str(path),
            "WATCHDOG_USEC": "400000",
        }
        daemon = Daemon(env, logs_dir / "notify.log").start()
        try:
            ready = await asyncio.to_thread(_messages, sock, until="READY=1")
            assert any("STATUS=delivering from default" in m for m in ready)
            assert await asyncio.to_thread(_messages, sock, until="WATCHDOG=1")
            daemon.signal(signal.SIGTERM)
            assert await asyncio.to_thread(_messages, sock, until="STOPPING=1")
            assert await asyncio.to_thread(daemon.wait, 30) == 0
        finally:
            daemon.stop()


@pytest.mark.parametrize("unit", ["dispatcher.service", "dispatcher@.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    """systemd-analyze verify accepts both units (ExecStart pointed at this checkout's binary)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, (
        "systemd-analyze is missing: make test installs systemd (apt-get install systemd)"
    )
    text = (UNITS / unit).read_text()
    assert "ExecStart=/opt/dispatcher/.venv/bin/dispatcher " in text
    binary = Path(sys.prefix) / "bin" / "dispatcher"
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/dispatcher/.venv/bin/dispatcher", str(binary)))
    name = str(copy).replace("@.service", "@1.service") if "@" in unit else str(copy)
    if "@" in unit:
        Path(name).symlink_to(copy)
    result = subprocess.run(
        [analyze, "verify", name], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [
        line for line in result.stderr.splitlines() if unit.split("@", maxsplit=1)[0] in line
    ]
    assert result.returncode == 0, result.stderr
    assert problems == [], problems


async def test_daemon_notifies_reloading_then_ready_on_sighup(
    tmp_path: Path, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """SIGHUP sends RELOADING=1 with MONOTONIC_USEC, then READY=1 once the config is applied."""
    path = tmp_path / "notify"
    with _listen(path) as sock:
        env = {**daemon_env(redis_url, prefix), "NOTIFY_SOCKET": str(path)}
        daemon = Daemon(env, logs_dir / "reload-notify.log").start()
        try:
            await asyncio.to_thread(_messages, sock, until="READY=1")
            sent_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            daemon.signal(signal.SIGHUP)
            got = await asyncio.to_thread(_messages, sock, until="READY=1")
            reloading = next(m.split("\n") for m in got if "RELOADING=1" in m)
            usec = next(int(f.partition("=")[2]) for f in reloading if f.startswith("MONOTONIC_"))
            assert usec >= sent_ns // 1000, "MONOTONIC_USEC is this host's CLOCK_MONOTONIC"
            assert got.index(next(m for m in got if "RELOADING=1" in m)) < len(got) - 1
            assert "config.reloaded" in daemon.log
            daemon.signal(signal.SIGTERM)
            assert await asyncio.to_thread(daemon.wait, 30) == 0
        finally:
            daemon.stop()


def test_units_reload_with_sighup() -> None:
    """Both units keep Type=notify and reload with SIGHUP to the main process."""
    for unit in ("dispatcher.service", "dispatcher@.service"):
        lines = (UNITS / unit).read_text().splitlines()
        assert "Type=notify" in lines
        assert "ExecReload=/bin/kill -HUP $MAINPID" in lines


def test_a_full_notify_socket_never_blocks_the_sender(tmp_path: Path) -> None:
    """When the notify socket's reader stops reading, notes are dropped instead of blocking the
    daemon's event loop (before: sendto blocked once the socket's queue was full)."""
    path = tmp_path / "notify"
    with _listen(path):  # bound, never read
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        # Before the fix the first send past the queue's capacity hung here for good.
        sent = [notifier.status("x" * 1000) for _ in range(5000)]
        assert sent[0]
        assert not all(sent), "the socket's queue filled up, and the sends went on"
