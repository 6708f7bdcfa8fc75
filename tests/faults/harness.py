"""One fault scenario: real ``dispatcher run`` processes, a real redis-server, real targets,
a steady publisher, a fault, and the same accounting at the end of every scenario.

The accounting, per scenario (a ``Row``):

- accepted: publishes that returned job ids; indeterminate: publishes that failed without an
  answer (the event may or may not have been enqueued); refused: publishes refused with a
  clear error (nothing may arrive for them; `Scenario.refused` keeps each one's error code).
- delivered: accepted jobs in state ``delivered`` that arrived at their target and were answered
  2xx; duplicated: extra 2xx-answered arrivals of the same job (at-least-once allows them).
- dlq: accepted jobs in the DLQ, by reason (each must have one).
- lost: accepted jobs that are gone, or say delivered/dead without the arrival/DLQ entry to
  show for it; unexpected: arrivals of events never accepted (nor indeterminate); stuck:
  accepted jobs not finished when the scenario's deadline passed. All three must be 0, and
  every signature must verify with the webhook's secret. When Redis itself lost its data (a
  restart without persistence, `Scenario.forget_before`), the jobs accepted before that are
  not judged: the notes count them as lost with Redis's data.
- healthy-endpoint latency (publish to first arrival) p50/p99 before, during and after the
  fault, and the time from the end of the fault until every job accepted before that end was
  finished (recover_s).
- figures: what a scenario measures besides (deferrals, throughput, load time), recorded and
  printed under the table, never asserted on.

Every event carries its publisher sequence number, so an arrival is matched to its publish even
when the publish call itself failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook as Verifier

from dispatcher import Client
from dispatcher.errors import DispatcherError, RedisUnavailable
from tests.helpers import (
    Daemon,
    RedisServer,
    daemon_env,
    free_port,
    stop_daemons,
    stream_entries,
)
from tests.target import Target

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from dispatcher.queue.store import Store
    from tests.target import Behaviour, Received

#: make test runs every scenario small; make test-faults (FAULTS_FULL=1) runs them longer.
FULL = os.environ.get("FAULTS_FULL") == "1"
SCALE = 3.0 if FULL else 1.0
FINAL = frozenset({"delivered", "dead"})
PHASES = ("before", "during", "after")
SIGNATURE_TOLERANCE_S = 300

FAST = {
    "delivery_timeout_s": "2",
    "delivery_stall_timeout_s": "3",
    "delivery_backoff_base_s": "0.05",
    "delivery_backoff_cap_s": "0.5",
    "delivery_max_attempts": "25",
    "delivery_concurrency": "64",
}


@dataclass
class Row:
    scenario: str
    accepted: int = 0
    indeterminate: int = 0
    refused: int = 0
    delivered: int = 0
    duplicated: int = 0
    dlq: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    unexpected: int = 0
    stuck: int = 0
    bad_signatures: int = 0
    latency_ms: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    recover_s: float | None = None
    notes: list[str] = field(default_factory=list)
    figures: dict[str, float | int | str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = [
            f"{name} = {value}"
            for name, value in (
                ("lost", self.lost),
                ("unexpected", self.unexpected),
                ("stuck", self.stuck),
                ("bad signatures", self.bad_signatures),
            )
            if value
        ]
        if "" in self.dlq:
            found.append(f"{self.dlq['']} DLQ entries without a reason")
        return found


@dataclass
class _Sent:
    seq: int
    tenant: str
    at: float  # time.monotonic() of the publish
    job_ids: list[str] = field(default_factory=list)


class Scenario:
    """Set up with ``async with``; publish with `publishing`; mark the fault with `fault`."""

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        daemons: int = 2,
        healthy: int = 8,
        appendonly: bool = True,
        settings: dict[str, str] | None = None,
        seed: int = 1,
        target_host: str = "127.0.0.1",
        state_dir: Path | None = None,
        metrics: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.redis = RedisServer(directory / "redis", appendonly=appendonly)
        # With a state_dir the daemons run on their embedded Redis (no redis.url): one at a
        # time, each started before the client can connect.
        self.state_dir = state_dir
        self.metrics = metrics  # each daemon serves /metrics on a port of its own
        self.admin_ports: dict[int, int] = {}  # id(daemon) -> its admin port
        self.extra_env = env or {}  # besides the settings, e.g. a PATH for redis-server
        self.daemon_count = daemons
        self.healthy = [f"/ok{i}" for i in range(healthy)]
        self.settings = {**FAST, **(settings or {})}
        self.random = random.Random(seed)
        self.target = Target(target_host)
        self.daemons: list[Daemon] = []
        self.client: Client
        self.secrets: dict[str, str] = {}  # path -> webhook secret
        self.tenants: dict[str, str] = {}  # tenant -> path
        self.sent: dict[int, _Sent] = {}
        self.indeterminate: set[int] = set()
        self.refused: dict[int, str] = {}  # seq -> the error's code
        self.fault_window: tuple[float, float] | None = None
        self._recovery: asyncio.Task[float] | None = None
        self._forget_before = float("-inf")
        self._seq = 0
        self._started = 0

    # --- set-up --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state_dir is None:
            self.redis.start()
        await self.target.__aenter__()
        if self.state_dir is not None:
            for _ in range(self.daemon_count):
                await self.embedded_started(self.start_daemon())
        self.client = Client.from_url(self.url, prefix="faults")
        for path in self.healthy:
            await self.endpoint(path)
        if self.state_dir is None:
            for _ in range(self.daemon_count):
                self.start_daemon()
        await self.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_daemons(*self.daemons)
        await self.client.close()
        await self.target.__aexit__(None, None, None)
        self.redis.stop()

    @property
    def url(self) -> str:
        """Where the client reaches Redis: the embedded one's socket, or the redis-server."""
        if self.state_dir is not None:
            return f"unix://{self.state_dir / 'redis.sock'}"
        return self.redis.url

    @property
    def env(self) -> dict[str, str]:
        if self.state_dir is not None:
            env = daemon_env("", "faults", state_dir=str(self.state_dir), **self.settings)
        else:
            env = daemon_env(self.redis.url, "faults", **self.settings)
        return env | self.extra_env

    def start_daemon(self, **settings: str) -> Daemon:
        """One more ``dispatcher run``, with ``settings`` over the scenario's (this one only)."""
        self._started += 1
        env = self.env | {f"DISPATCHER_{k.upper()}": v for k, v in settings.items()}
        port = free_port() if self.metrics else None
        if port is not None:
            env["DISPATCHER_ADMIN_LISTEN"] = f"127.0.0.1:{port}"
        daemon = Daemon(env, self.directory / f"daemon-{self._started}.log").start()
        if port is not None:
            self.admin_ports[id(daemon)] = port
        self.daemons.append(daemon)
        return daemon

    async def embedded_started(self, daemon: Daemon, timeout_s: float = 60.0) -> None:
        """Wait until ``daemon``'s embedded Redis answers (after loading all its data)."""
        deadline = time.monotonic() + timeout_s
        while "redis.embedded_started" not in daemon.log:
            if daemon.process is not None and daemon.process.poll() is not None:
                msg = f"the daemon exited with {daemon.process.returncode}: {daemon.log[-2000:]}"
                raise AssertionError(msg)
            if time.monotonic() > deadline:
                msg = f"no embedded Redis within {timeout_s} s; see {daemon.log_path}"
                raise AssertionError(msg)
            await asyncio.sleep(0.05)

    async def counter(self, name: str) -> dict[str, float]:
        """A counter of every running daemon's ``/metrics`` (``metrics=True``), summed, by its
        labels (``reason="x"``; ``""`` without labels)."""
        totals: dict[str, float] = {}
        async with aiohttp.ClientSession() as session:
            for daemon in self.daemons:
                port = self.admin_ports.get(id(daemon))
                if port is None or daemon.process is None or daemon.process.poll() is not None:
                    continue
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
                for line in text.splitlines():
                    if line.startswith((f"{name}{{", f"{name} ")):
                        labels, _, value = line.rpartition(" ")
                        key = labels.removeprefix(name).strip("{}")
                        totals[key] = totals.get(key, 0.0) + float(value)
        return totals

    async def ready(self, timeout_s: float = 20.0) -> None:
        """Wait until every running daemon has signed in (its first heartbeat)."""
        running = sum(1 for d in self.daemons if d.process and d.process.poll() is None)
        deadline = time.monotonic() + timeout_s
        while len((await self.client.status())["workers"]) < running:
            if time.monotonic() > deadline:
                msg = f"{running} daemons did not all start; see {self.directory}"
                raise AssertionError(msg)
            await asyncio.sleep(0.1)

    async def endpoint(
        self,
        path: str,
        *behaviours: Behaviour,
        tenant: str | None = None,
        url: str | None = None,
        **fields: Any,
    ) -> str:
        """A webhook whose target at ``path`` plays ``behaviours``, in a tenant of its own or
        added to ``tenant`` (a fan-out: each event of that tenant makes one job per webhook);
        ``url`` points it elsewhere (a closed port, a canary), ``path`` still naming it."""
        if behaviours:
            self.target.script(path, *behaviours)
        if tenant is None:
            tenant = f"tenant{len(self.tenants)}"
            self.tenants[tenant] = path
        hook = await self.client.create_webhook(tenant, url or self.target.url(path), **fields)
        self.secrets[path] = hook["secret"]
        return tenant

    # --- publishing ------------------------------------------------------------------------------

    async def publish(self, tenant: str) -> list[str]:
        """One event with the next sequence number; its fate goes into the ledger. Returns
        its job ids (none when the publish failed)."""
        self._seq += 1
        seq = self._seq
        sent = _Sent(seq, tenant, time.monotonic())
        try:
            answer = await self.client.publish(tenant, "fault.test", {"seq": seq})
        except RedisUnavailable:
            self.indeterminate.add(seq)  # the call may have reached Redis before it failed
            return []
        except DispatcherError as exc:
            self.refused[seq] = exc.code
            return []
        sent.job_ids = [job["id"] for job in answer["jobs"]]
        self.sent[seq] = sent
        return sent.job_ids

    @contextlib.asynccontextmanager
    async def publishing(
        self, per_second: float, tenants: list[str] | None = None
    ) -> AsyncIterator[None]:
        """Publish at a steady rate, round-robin over ``tenants`` (the healthy ones by default)."""
        chosen = tenants or [t for t, p in self.tenants.items() if p in self.healthy]
        stop = asyncio.Event()

        async def run() -> None:
            interval = 1 / per_second
            next_at = time.monotonic()
            n = 0
            while not stop.is_set():
                await self.publish(chosen[n % len(chosen)])
                n += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        task = asyncio.create_task(run())
        try:
            yield
        finally:
            stop.set()
            await task

    @contextlib.asynccontextmanager
    async def fault(self) -> AsyncIterator[None]:
        """Marks the fault's window, for the latency phases and the time to recover."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.fault_window = (start, time.monotonic())
            self._recovery = asyncio.create_task(self._watch_recovery(self.fault_window[1]))

    async def _watch_recovery(self, fault_end: float) -> float:
        """When every job accepted before the fault ended was finished (polled while the
        scenario goes on, re-reading only the jobs not finished yet)."""
        waiting = [j for s in self._judged() if s.at <= fault_end for j in s.job_ids]
        while waiting:
            try:
                states = await self._states(waiting)
            except DispatcherError:  # Redis may still be coming back
                states = {}
            waiting = [j for j in waiting if states.get(j) not in FINAL]
            if waiting:
                await asyncio.sleep(0.25)
        return time.monotonic()

    async def steady(self, seconds: float) -> None:
        await asyncio.sleep(seconds * SCALE)

    def forget_before(self, at: float) -> None:
        """Redis lost its data at ``at`` (``time.monotonic()``), as a restart without
        persistence does: the jobs accepted before then went with it, a loss that is Redis's
        and not the daemon's. They are left out of the accounting and counted in the notes."""
        self._forget_before = at

    # --- accounting ------------------------------------------------------------------------------

    async def settle(self, *, timeout_s: float = 60.0) -> Row:
        """Wait until every accepted job is finished (or the deadline), then account."""
        deadline = time.monotonic() + timeout_s
        judged = self._judged()
        states: dict[str, str] = {}
        while True:
            states = await self._states([j for s in judged for j in s.job_ids])
            if all(state in FINAL for state in states.values()):
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        row = await self._account(states)
        if self._recovery is not None and self.fault_window is not None:
            if not self._recovery.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(self._recovery), max(0.0, deadline - time.monotonic())
                    )
            if self._recovery.done():
                recovered_at = self._recovery.result()
                row.recover_s = round(max(0.0, recovered_at - self.fault_window[1]), 2)
            else:
                self._recovery.cancel()
        return row

    async def _states(self, job_ids: list[str]) -> dict[str, str]:
        states: dict[str, str] = {}
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start : start + 500]
            jobs = await asyncio.gather(*(self.client_of(j).get_job(j) for j in chunk))
            for job_id, job in zip(chunk, jobs, strict=True):
                states[job_id] = job["state"] if job else "missing"
        return states

    async def _account(self, states: dict[str, str]) -> Row:
        row = Row(self.name, accepted=len(self.sent))
        row.indeterminate = len(self.indeterminate)
        row.refused = len(self.refused)
        arrivals, ok_arrivals = self._arrivals(row)
        dead = await self._dead_reasons([j for j, s in states.items() if s == "dead"])
        for sent in self._judged():
            for job_id in sent.job_ids:
                self._judge(row, job_id, states.get(job_id, "missing"), dead, ok_arrivals)
        forgotten = [j for s in self.sent.values() if s.at < self._forget_before for j in s.job_ids]
        if forgotten:
            arrived = sum(1 for j in forgotten if ok_arrivals[j])
            row.notes.append(
                f"{len(forgotten)} jobs accepted before Redis lost its data were lost with "
                f"Redis's data ({arrived} of them had been delivered before)"
            )
        row.latency_ms = self._latency(arrivals)
        return row

    def _judged(self) -> list[_Sent]:
        """The accepted publishes to account for: all but those Redis lost with its data."""
        return [s for s in self.sent.values() if s.at >= self._forget_before]

    def _arrivals(self, row: Row) -> tuple[dict[str, list[float]], Counter[str]]:
        """Arrival times per job, and how many were answered 2xx; counts the unexpected ones
        and the signatures that do not verify."""
        arrivals: dict[str, list[float]] = {}
        ok_arrivals: Counter[str] = Counter()
        for request, status in zip(self.target.received, self.target.answers, strict=True):
            job_id = request.headers.get("webhook-id", "")
            seq = _seq_of(request.body)
            if seq is None or (seq not in self.sent and seq not in self.indeterminate):
                row.unexpected += 1
                continue
            if not _signed(self.secrets.get(request.path, ""), request):
                row.bad_signatures += 1
            arrivals.setdefault(job_id, []).append(request.at)
            if status is not None and 200 <= status < 300:
                ok_arrivals[job_id] += 1
        return arrivals, ok_arrivals

    @staticmethod
    def _judge(
        row: Row, job_id: str, state: str, dead: dict[str, str], ok_arrivals: Counter[str]
    ) -> None:
        if state == "delivered":
            if ok_arrivals[job_id]:
                row.delivered += 1
                row.duplicated += ok_arrivals[job_id] - 1
            else:
                row.lost += 1
                row.notes.append(f"{job_id} says delivered but no 2xx arrival shows it")
        elif state == "dead":
            reason = dead.get(job_id)
            if reason is None:
                row.lost += 1
                row.notes.append(f"{job_id} is dead but not in the DLQ")
            else:
                row.dlq[reason] = row.dlq.get(reason, 0) + 1
        elif state == "missing":
            row.lost += 1
            row.notes.append(f"{job_id} is gone")
        else:
            row.stuck += 1
            row.notes.append(f"{job_id} is still {state}")

    async def _dead_reasons(self, job_ids: list[str]) -> dict[str, str]:
        """Reasons of the DLQ entries of ``job_ids`` (read from the DLQ stream itself)."""
        wanted = set(job_ids)
        found: dict[str, str] = {}
        if not wanted:
            return found
        for store in self.dlq_stores():
            for _sid, fields in await stream_entries(store.redis, store.keys.dlq):
                job_id = fields.get(b"j", b"").decode()
                if job_id in wanted:
                    found[job_id] = fields.get(b"r", b"").decode()
        return found

    def client_of(self, job_id: str) -> Client:  # noqa: ARG002 - one Redis holds every job
        """The Client that reads this job where it is (a scenario with a Redis per region
        answers the job's region's)."""
        return self.client

    def dlq_stores(self) -> list[Store]:
        """Where dead jobs are: this Redis's DLQ (a scenario with several Redis, one per
        region, names each)."""
        return [self.client.store]

    def _latency(self, arrivals: dict[str, list[float]]) -> dict[str, tuple[float, float] | None]:
        samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
        window = self.fault_window
        for sent in self.sent.values():
            if self.tenants.get(sent.tenant) not in self.healthy:
                continue
            for job_id in sent.job_ids:
                if not arrivals.get(job_id):
                    continue
                ms = (min(arrivals[job_id]) - sent.at) * 1000
                if window is None or sent.at < window[0]:
                    samples["before"].append(ms)
                elif sent.at <= window[1]:
                    samples["during"].append(ms)
                else:
                    samples["after"].append(ms)
        return {phase: _p50_p99(values) for phase, values in samples.items()}


def _signed(secret: str, request: Received) -> bool:
    """Whether a Standard Webhooks verifier accepts the delivery as it was when it arrived:
    one signature matches, and its timestamp was within the verifiers' 5-minute tolerance of
    the arrival (``Webhook.verify`` judges against now, which a long run has left behind)."""
    headers = request.headers
    try:
        timestamp = int(headers["webhook-timestamp"])
        expected = Verifier(secret).sign(
            headers["webhook-id"], datetime.fromtimestamp(timestamp, UTC), request.body.decode()
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return False
    arrived = time.time() - (time.monotonic() - request.at)
    fresh = abs(arrived - timestamp) <= SIGNATURE_TOLERANCE_S
    given = headers.get("webhook-signature", "").split(" ")
    return fresh and any(hmac.compare_digest(expected, sig) for sig in given)


def _seq_of(body: bytes) -> int | None:
    try:
        value = orjson.loads(body).get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _p50_p99(values: list[float]) -> tuple[float, float] | None:
    if len(values) < 2:
        return None
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49], 1), round(cuts[98], 1)
