"""The embedded Redis: a ``redis-server`` child on a unix socket in ``state_dir``.

Append-only file on (``appendfsync everysec``), no TCP port, ``noeviction``. Its data lives in
``state_dir`` and survives restarts. If the child dies, the daemon exits non-zero so that
systemd restarts both.
"""

from __future__ import annotations

import asyncio
import ctypes
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING

import structlog

from dispatcher.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

log = structlog.get_logger()

SOCKET_NAME = "redis.sock"
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


class EmbeddedRedis:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.socket = self.state_dir / SOCKET_NAME
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

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
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(self.state_dir / "redis.log"),
        ]

    async def start(self, *, timeout_s: float = 15.0) -> str:
        binary = find_redis_server()
        if binary is None:
            raise ConfigError([INSTALL_HINT])
        if len(str(self.socket)) > _MAX_SOCKET_PATH:
            raise ConfigError([f"state_dir: {self.state_dir} is too long for a unix socket path"])
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if await self._ping():
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
        await self._wait_ready(timeout_s)
        log.info("redis.embedded_started", pid=self.process.pid, socket=str(self.socket))
        return self.url

    async def _wait_ready(self, timeout_s: float) -> None:
        if self.process is None:
            raise RuntimeError("redis-server was not started")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise ConfigError(
                    [
                        (
                            f"embedded redis-server exited with {self.process.returncode}; "
                            f"see {self.state_dir / 'redis.log'}"
                        )
                    ]
                )
            if await self._ping():
                return
            await asyncio.sleep(0.05)  # not listening yet, or -LOADING the append-only file
        raise ConfigError([f"embedded redis-server did not answer within {timeout_s:g} s"])

    async def _ping(self) -> bool:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket))
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            async with asyncio.timeout(2):
                return (await reader.readline()).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    async def wait(self) -> int:
        """Return when the child exits, with its exit code."""
        if self.process is None:
            raise RuntimeError("redis-server was not started")
        return await self.process.wait()

    async def stop(self, *, timeout_s: float = 10.0) -> None:
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
