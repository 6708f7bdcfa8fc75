"""The embedded Redis: a ``redis-server`` child on a unix socket in ``state_dir``.

Append-only file on (``appendfsync everysec``), no TCP port, ``maxmemory`` from
``redis.embedded_maxmemory`` (1gb by default) with ``noeviction``: at the limit publishing is
refused (503 ``redis_oom``) and accepted jobs stay, where without one Redis would grow until
the host runs out of memory. Its data lives in ``state_dir`` and survives restarts. If the
child dies, the daemon exits non-zero so that systemd restarts both.

Starting it:

- ``state_dir/dispatcher.lock`` is held with ``flock`` for the daemon's life, so a second daemon
  on the same ``state_dir`` is refused even while the first one's Redis is still loading its
  data (the lock goes with the process, kill -9 included). A server already answering on the
  socket (a leftover child) is refused too.
- Any answer counts as alive, ``-LOADING`` included: a large append-only file can take minutes
  to load, and killing the server for it would make ``Restart=on-failure`` repeat the load
  forever. While it loads, the daemon logs the progress and asks systemd for more start time
  (``EXTEND_TIMEOUT_USEC``); only a server that gives no answer at all for ``START_TIMEOUT_S``
  fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import fcntl
import os
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import structlog

from dispatcher.config import DEFAULT_EMBEDDED_MAXMEMORY
from dispatcher.errors import ConfigError
from dispatcher.notify import Notifier

if TYPE_CHECKING:
    from pathlib import Path

log = structlog.get_logger()

SOCKET_NAME = "redis.sock"
LOCK_NAME = "dispatcher.lock"
NEARLY_FULL = 0.9  # a start with this share of maxmemory already used is logged
START_TIMEOUT_S = 15.0  # how long a starting server may give no answer at all
LOADING_REPORT_S = 5.0  # how often a long load is logged and systemd's start timeout extended
_MAX_SOCKET_PATH = 104  # sun_path is 108 bytes on Linux, fewer elsewhere
INSTALL_HINT = (
    "redis-server was not found: install it (Debian/Ubuntu: apt-get install redis-server) "
    "or set redis.url (DISPATCHER_REDIS_URL) to an existing Redis"
)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the daemon dies, even by SIGKILL (Linux only)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def find_redis_server() -> str | None:
    for candidate in (
        "redis-server",
        "/usr/bin/redis-server",
        "/usr/sbin/redis-server",
        "/usr/local/bin/redis-server",
    ):
        found = shutil.which(candidate)
        if found:
            return found
    return None


class Answer(enum.Enum):
    NONE = "none"  # nothing listens
    OTHER = "other"  # something answers, but neither PONG nor LOADING
    LOADING = "loading"  # alive, still loading its data set
    READY = "ready"


class EmbeddedRedis:
    def __init__(
        self,
        state_dir: Path,
        notifier: Notifier | None = None,
        *,
        maxmemory: int = DEFAULT_EMBEDDED_MAXMEMORY,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.maxmemory = maxmemory  # bytes, 0: no limit (redis.embedded_maxmemory)
        self.socket = self.state_dir / SOCKET_NAME
        self.process: asyncio.subprocess.Process | None = None
        self.notifier = notifier or Notifier()
        self._lock_fd: int | None = None
        self.loading_seen = False  # the server answered -LOADING while starting

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.socket))}"  # redis-py unquotes the path

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.state_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory",
            str(self.maxmemory),
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(self.state_dir / "redis.log"),
        ]

    async def start(self, *, timeout_s: float | None = None) -> str:
        binary = find_redis_server()
        if binary is None:
            raise ConfigError([INSTALL_HINT])
        if len(str(self.socket)) > _MAX_SOCKET_PATH:
            raise ConfigError([f"state_dir: {self.state_dir} is too long for a unix socket path"])
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        if await self._ping() is not Answer.NONE:
            self._unlock()
            raise ConfigError(
                [
                    (
                        f"state_dir: {self.state_dir} is in use by another running embedded Redis "
                        "(is another dispatcher running with the same state_dir?)"
                    )
                ]
            )
        self.socket.unlink(missing_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *self._command(binary),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            # Its own session: a Ctrl-C or a signal to the daemon's process group must not
            # stop Redis before the daemon has drained and written its last outcomes.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        await self._wait_ready(START_TIMEOUT_S if timeout_s is None else timeout_s)
        # The exact URL a producer (``Client.from_url``) or redis-cli -s should use.
        log.info("redis.embedded_started", pid=self.process.pid, url=self.url)
        await self._warn_when_nearly_full()
        return self.url

    def _lock(self) -> None:
        """Hold ``state_dir/dispatcher.lock`` for this process's life, or refuse to start."""
        fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                [
                    (
                        f"state_dir: {self.state_dir} is locked by another dispatcher "
                        f"({self.state_dir / LOCK_NAME}); each daemon with an embedded Redis "
                        "needs its own state_dir"
                    )
                ]
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    async def _wait_ready(self, timeout_s: float) -> None:
        """Wait until the server answers PONG. A server that answers ``-LOADING`` is alive and
        is waited for however long it takes; ``timeout_s`` bounds only the time without any
        answer."""
        if self.process is None:
            raise RuntimeError("redis-server was not started")
        silent_since = time.monotonic()
        next_report = silent_since + LOADING_REPORT_S
        while True:
            if self.process.returncode is not None:
                raise ConfigError(
                    [
                        (
                            f"embedded redis-server exited with {self.process.returncode}; "
                            f"see {self.state_dir / 'redis.log'}"
                        )
                    ]
                )
            answer = await self._ping()
            now = time.monotonic()
            if answer is Answer.READY:
                return
            if answer is Answer.LOADING:
                self.loading_seen = True
                silent_since = now
                if now >= next_report:
                    next_report = now + LOADING_REPORT_S
                    await self._report_loading()
            elif now - silent_since > timeout_s:
                raise ConfigError(
                    [f"embedded redis-server did not answer within {timeout_s:g} s"]
                )
            await asyncio.sleep(0.05)

    async def _report_loading(self) -> None:
        """Log how far the load is, and give systemd another interval of start time."""
        loaded = await self._loaded_percent()
        log.info("redis.embedded_loading", loaded_percent=loaded)
        self.notifier.send(
            f"EXTEND_TIMEOUT_USEC={int(LOADING_REPORT_S * 4 * 1e6)}",
            "STATUS=loading the embedded Redis data"
            + (f" ({loaded:.0f}%)" if loaded is not None else ""),
        )

    async def _ask(self, command: bytes) -> bytes | None:
        """One inline command on a fresh connection; its reply (first line or bulk), or None."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket))
        except OSError:
            return None
        try:
            writer.write(command + b"\r\n")
            await writer.drain()
            async with asyncio.timeout(2):
                line = await reader.readline()
                if line.startswith(b"$") and line[1:].strip().isdigit():
                    return await reader.readexactly(int(line[1:]) + 2)
                return line
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()

    async def _ping(self) -> Answer:
        reply = await self._ask(b"PING")
        if reply is None:
            return Answer.NONE
        if reply.startswith(b"+PONG"):
            return Answer.READY
        if reply.startswith(b"-LOADING"):
            return Answer.LOADING
        # Any other answer (an error such as -NOAUTH, a server of another setup) is a live
        # server all the same: it must not be started over, nor waited for.
        return Answer.OTHER if reply else Answer.NONE

    async def _loaded_percent(self) -> float | None:
        return await self._info_field(b"persistence", b"loading_loaded_perc")

    async def _info_field(self, section: bytes, name: bytes) -> float | None:
        reply = await self._ask(b"INFO " + section)
        for line in (reply or b"").splitlines():
            if line.startswith(name + b":"):
                with contextlib.suppress(ValueError):
                    return float(line.partition(b":")[2])
        return None

    async def _warn_when_nearly_full(self) -> None:
        """A data set already near ``maxmemory`` (say, a state_dir that grew before the limit
        was set or lowered) gets publishes refused from the start: say so, and what to raise."""
        if not self.maxmemory:
            return
        used = await self._info_field(b"memory", b"used_memory")
        if used is not None and used >= NEARLY_FULL * self.maxmemory:
            log.warning(
                "redis.embedded_memory_high",
                used_memory=int(used),
                maxmemory=self.maxmemory,
                hint=(
                    "at maxmemory publishing is refused (503 redis_oom); raise "
                    "redis.embedded_maxmemory (DISPATCHER_REDIS_EMBEDDED_MAXMEMORY)"
                ),
            )

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    async def wait(self) -> int:
        """Return when the child exits, with its exit code."""
        if self.process is None:
            raise RuntimeError("redis-server was not started")
        return await self.process.wait()

    async def stop(self, *, timeout_s: float = 10.0) -> None:
        try:
            await self._stop(timeout_s)
        finally:
            self._unlock()

    async def _stop(self, timeout_s: float) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()  # redis-server flushes the AOF on SIGTERM
        try:
            async with asyncio.timeout(timeout_s):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        log.info("redis.embedded_stopped", code=self.process.returncode)
