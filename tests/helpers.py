"""Small tools the tests share: waiting with a deadline, a real Redis server, daemons."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import orjson

from dispatcher.ids import new_event_ids, with_region
from dispatcher.model import Job, JobState
from dispatcher.queue import codec, streams
from dispatcher.queue.keys import Keys, shard_of
from dispatcher.queue.streams import SettleKind, Settlement

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from dispatcher.queue.store import Store
    from dispatcher.queue.streams import Claim
    from dispatcher.sender import Sender
    from dispatcher.sender_aiohttp import AiohttpSender
    from tests.target import Target

    #: Either HTTP client; the conftest ``make_sender`` fixture gives each in turn.
    AnySender: TypeAlias = Sender | AiohttpSender
    MakeSender: TypeAlias = type[Sender | AiohttpSender]

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
        # Ours answering, not another process's server on the port (another xdist worker's
        # took it between free_port and this start): that one would answer PING too. And
        # ready: INFO answers while the data set loads (an AOF replayed), PING only after.
        mine = f"process_id:{self.process.pid}\r\n".encode()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if mine in _ask(self.port, b"INFO server\r\n") and _ask(
                    self.port, b"PING\r\n"
                ).startswith(b"+PONG"):
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


@contextlib.contextmanager
def redis_at(url: str | None) -> Iterator[str]:
    """``url``, or for the block's length a redis-server of its own in a temporary directory
    (the benchmarks' ``--redis-url`` or not)."""
    if url is not None:
        yield url
        return
    server = RedisServer(Path(tempfile.mkdtemp()))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _ask(port: int, command: bytes) -> bytes:
    """One inline command's first answer bytes from the redis-server on ``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
        s.sendall(command)
        return s.recv(65536)


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


async def stop_daemons(*daemons: Daemon | None) -> None:
    """Stop ``daemons`` (None skipped) from a test's event loop: each in a thread and all at
    once, so a Target in this loop goes on answering the requests they drain meanwhile (a
    blocking ``Daemon.stop`` would leave those to run into the delivery timeout)."""
    await asyncio.gather(*(asyncio.to_thread(d.stop) for d in daemons if d is not None))


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


def short_waits(waits: dict[str, float], *, tasks_modules: str = "") -> dict[str, str]:
    """Environment for a ``dispatcher run`` child whose fixed waits are ``waits``
    (``{"liveness.MAX_AGE_S": 3.0}``: dispatcher module constants, in seconds), set by
    tests/short_waits.py at start; ``tasks_modules`` are loaded besides it."""
    modules = ",".join(filter(None, ("tests.short_waits", tasks_modules)))
    spec = ",".join(f"{name}={seconds!r}" for name, seconds in waits.items())
    return {"DISPATCHER_TASKS_MODULES": modules, "TEST_SHORT_WAITS": spec}


async def hooks_in_every_shard(
    client: Client, target: Target, shards: int, *, per_shard: int = 2, path: str = "/hook"
) -> list[shapes.WebhookWithSecret]:
    """Webhooks of tenant ``acme`` until each shard holds ``per_shard`` (placement hashes the
    new id, so how many that takes varies)."""
    hooks: list[shapes.WebhookWithSecret] = []
    while min(sum(shard_of(h["id"]) == k for h in hooks) for k in range(shards)) < per_shard:
        hooks.append(await client.create_webhook("acme", target.url(path)))
        assert len(hooks) < 100 * shards, "placement never reached every shard"
    return hooks


def log_events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    """The daemon's JSON log lines whose event is ``name``, parsed."""
    found = []
    for line in daemon.log.splitlines():
        if f'"{name}"' in line:
            entry = orjson.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


# --- Redis Cluster and Sentinel on loopback ----------------------------------------------------


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def redis_cli(port: int, *args: str) -> str:
    """Run redis-cli against 127.0.0.1:``port``; its output."""
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
    done = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def _wait_until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.05)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _cluster_ok(port: int) -> bool:
    return "cluster_state:ok" in redis_cli(port, "cluster", "info")


def _spawn(directory: Path, *args: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make test installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [binary, *args],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _server_args(port: int, directory: Path, *extra: str) -> list[str]:
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction", "--logfile", str(directory / "redis.log"),
        *extra,
    ]  # fmt: skip


@dataclass
class Servers:
    """Redis processes started by a test, stopped together."""

    directory: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, port: int, *args: str) -> None:
        self.processes[port] = _spawn(self.directory / str(port), *args)

    def kill(self, port: int) -> None:
        """SIGKILL one server: no shutdown, no last AOF write."""
        process = self.processes[port]
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class ClusterServers(Servers):
    """A Redis Cluster of three primaries (no replicas) on free loopback ports."""

    ports: list[int] = field(default_factory=lambda: [free_cluster_port() for _ in range(3)])

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    def start(self) -> None:
        for port in self.ports:
            directory = self.directory / str(port)
            directory.mkdir(parents=True, exist_ok=True)
            self.spawn(
                port,
                *_server_args(port, directory),
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
            )  # fmt: skip
        for port in self.ports:
            _wait_until(partial(_answers, port), f"redis-server on {port}")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        redis_cli(self.ports[0], "--cluster", "create", *nodes, "--cluster-replicas", "0",
                  "--cluster-yes")  # fmt: skip
        for port in self.ports:
            _wait_until(partial(_cluster_ok, port), f"cluster_state:ok on {port}")


@dataclass
class SentinelServers(Servers):
    """A master, one replica and three sentinels watching them as ``mymaster``."""

    service: str = "mymaster"
    master: int = field(default_factory=free_port)
    replica: int = field(default_factory=free_port)
    sentinels: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self, *, down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> None:
        # A diskless sync that starts at once, not after 5 s of waiting for more replicas.
        master_dir = self.directory / str(self.master)
        self.spawn(
            self.master, *_server_args(self.master, master_dir, "--repl-diskless-sync-delay", "0")
        )
        replica_dir = self.directory / str(self.replica)
        replica_dir.mkdir(parents=True, exist_ok=True)
        self.spawn(
            self.replica,
            *_server_args(self.replica, replica_dir),
            "--replicaof", "127.0.0.1", str(self.master),
        )  # fmt: skip
        for port in [self.master, self.replica]:
            _wait_until(partial(_answers, port), f"redis on {port}")
        # In sync before the sentinels start: their first INFO of the master then lists the
        # replica (else they see it only at the next INFO, 10 s later).
        _wait_until(
            lambda: "master_link_status:up" in redis_cli(self.replica, "info", "replication"),
            "the replica in sync",
        )
        for port in self.sentinels:
            directory = self.directory / str(port)
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "sentinel.conf"  # sentinels rewrite their own config
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"logfile {directory / 'sentinel.log'}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master} 2\n"
                f"sentinel down-after-milliseconds {self.service} {down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            self.spawn(port, str(conf), "--sentinel")
        for port in self.sentinels:
            _wait_until(partial(_answers, port), f"redis on {port}")
        for port in self.sentinels:
            _wait_until(
                partial(self._knows_everyone, port),
                f"sentinel {port} seeing the replica and the other sentinels",
            )

    def _knows_everyone(self, port: int) -> bool:
        replicas = redis_cli(port, "sentinel", "replicas", self.service)
        others = redis_cli(port, "sentinel", "sentinels", self.service)
        return str(self.replica) in replicas and others.count("127.0.0.1") >= 2

    def master_port(self) -> int | None:
        """The master's port as the sentinels answer now (the first that answers)."""
        for port in self.sentinels:
            try:
                reply = redis_cli(port, "sentinel", "get-master-addr-by-name", self.service)
            except subprocess.CalledProcessError:
                continue
            lines = reply.split()
            if len(lines) == 2:
                return int(lines[1])
        return None


async def seed_dead_jobs(
    client: Client,
    redis: aioredis.Redis,
    prefix: str,
    n: int,
    payload: bytes = b'{"n":1}',
    *,
    entry_ids: list[str] | None = None,
    hook: shapes.Webhook | shapes.WebhookWithSecret | None = None,
    region: str | None = None,
) -> list[str]:
    """``n`` dead jobs of one live webhook, written as settle.lua writes them (record with
    ``d``, then the DLQ entry), much faster than failing them one by one; ``entry_ids``
    chooses their DLQ entry ids (so their dead-letter times). The webhook is ``hook`` (say one
    on a local target, so a replay stays on this machine), else a new one of tenant ``acme``
    on https://hooks.example.com/x. ``region``: the ids name it (``~<region>``)."""
    if hook is None:
        hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    keys = Keys(prefix)
    _event_id, job_prefix = new_event_ids()
    now_ms = client.store.clock.now_ms()
    ids = [with_region(f"{job_prefix}{i}", region) for i in range(n)]
    for start in range(0, n, 500):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(start + 500, n)):
            entry_id = entry_ids[i] if entry_ids else "*"
            pipe.xadd(keys.dlq, {"j": ids[i], "r": "max_attempts"}, id=entry_id)
        entries = await pipe.execute()
        pipe = redis.pipeline(transaction=False)
        for job_id, entry in zip(ids[start : start + 500], entries, strict=True):
            job = Job(
                id=job_id,
                webhook_id=hook["id"],
                tenant_id=hook["tenant_id"],
                event_type="e",
                stream="default",
                event_id="",
                state=JobState.DEAD,
                attempt=1,
                stalls=0,
                created_at_ms=now_ms,
                payload=payload,
                finished_at_ms=now_ms,
                last_error="500 down",
                dlq_id=entry.decode(),
                reason="max_attempts",
            )
            pipe.hset(keys.jobs, job_id, codec.encode(job))
        await pipe.execute()
    return ids


async def settlement(
    store: Store, claim: Claim, kind: str, state: JobState, *, due_in_ms: int = 1000
) -> Settlement:
    """An attempt's outcome for ``claim`` as a worker settles it: the job loaded as a worker
    loads what it claimed, one attempt more, in ``state``; a retry ('R') due in ``due_in_ms``,
    a dead job ('X') dead as max_attempts; a late attempt for the history if it is stale."""
    [job] = (await streams.load(store, [claim])).jobs
    assert job is not None
    now = store.clock.now_ms()
    job.attempt += 1
    job.state = state
    job.history.append([now, 200 if kind == "D" else 500, 1.0, None, 0])
    return Settlement(
        claim,
        SettleKind(kind),
        codec.encode(job),
        now + (due_in_ms if kind == "R" else 0),
        "max_attempts" if kind == "X" else "",
        orjson.dumps([now, 500, 1.0, "late", 1]),
    )
