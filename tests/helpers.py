"""Small tools the tests share: waiting with a deadline, a real Redis server, daemons."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    import redis.asyncio as aioredis

#: XRANGE entries as the tests' clients return them (decode_responses is off).
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


async def eventually(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s (last: {last!r})")
        await asyncio.sleep(interval_s)


async def stream_entries(conn: aioredis.Redis, key: str) -> StreamEntries:
    """The whole stream; redis-py types its entries as bytes or str, and here they are bytes."""
    return await cast("Awaitable[StreamEntries]", conn.xrange(key))


async def hash_len(conn: aioredis.Redis, key: str) -> int:
    """HLEN; redis-py 5.x types its reply as "an int or an awaitable", 8.x as an awaitable."""
    reply: Awaitable[int] | int = conn.hlen(key)
    return reply if isinstance(reply, int) else await reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A real redis-server child on a free loopback port."""

    directory: Path
    appendonly: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(
            f"redis-server on {self.port} did not start; see {self.directory}/redis.log"
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)


@dataclass
class Daemon:
    """A real ``dispatcher run`` process, configured through the environment."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # after ``dispatcher run``

    def start(self) -> Daemon:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "run", *self.args],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def wait(self, timeout_s: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def daemon_env(redis_url: str, prefix: str, **settings: str) -> dict[str, str]:
    """Environment for a ``dispatcher run`` child: no inherited DISPATCHER_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(
        {
            "DISPATCHER_REDIS_URL": redis_url,
            "DISPATCHER_REDIS_PREFIX": prefix,
            "DISPATCHER_ADMIN_LISTEN": "",
            "DISPATCHER_SECURITY_ALLOW_PRIVATE_TARGETS": "true",
            "DISPATCHER_LOG_FORMAT": "json",
            "DISPATCHER_LOG_LEVEL": "info",
        }
    )
    env.update({f"DISPATCHER_{k.upper()}": v for k, v in settings.items()})
    return env


def log_events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    """The daemon's JSON log lines whose event is ``name``, parsed."""
    found = []
    for line in daemon.log.splitlines():
        if f'"{name}"' in line:
            entry = orjson.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found
