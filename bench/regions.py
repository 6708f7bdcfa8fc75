"""Regions: one central deployment against region-local dispatch, across an injected latency.

    python -m bench.regions                               # 20 s at 200 events/s a producer, 3 runs
    python -m bench.regions --seconds 5 --runs 1          # a quick look (about a minute)
    python -m bench.regions --variants central --delay-ms 20

Two regions, a and b, on one machine: a redis-server for each (persistence off), one
bench/target.py serving both regions' endpoints (``--record``: every arrival with its time), and
delay proxies (``python -m tests.delay_proxy``, ``--delay-ms`` 40 each way) on every link that
crosses regions: one to a's Redis (``to_a``), one to b's (``to_b``), one to the endpoints of b
reached from a (``to_target``). A producer in each region (a ``Client`` in this process).
Variants:

- ``central``   one Redis and one ``dispatcher run`` in a, as one deployment serves the world
  today: b's producer publishes through ``to_a``, and a's daemon POSTs to b's endpoints through
  ``to_target``.
- ``regional``  a Redis and a daemon per region (``DISPATCHER_REGION``,
  ``DISPATCHER_REGIONS_A``/``_B``: its own Redis direct, the other's through its proxy);
  webhooks carry ``region``; each producer publishes to its own Redis, and a's jobs for b's
  webhooks go through a's outbox, relayed by a's daemon (and b's for a's).

One run of a variant, under a fresh ``redis.prefix``: the daemons start (regional: each Redis is
first made its region, ``Store.adopt_region``, as ``dispatcher run`` does at start); webhooks
``W_a`` (region a) and ``W_b`` (region b) of one tenant; a probe event from each producer until
it reaches both (the registry has replicated, the relay carries); then the **steady** phase:
each producer publishes ``--rate`` events/s (one ``Client.publish`` each, not awaited in turn)
for ``--warmup`` + ``--seconds`` s, every event a job for ``W_a`` and one for ``W_b``. Then the
**drain** phase: b's producer publishes a backlog of ``--backlog`` events to ``D_b`` (region b,
``max_in_flight`` ``--max-in-flight``) and ``--fifo-backlog`` to ``F_b`` (region b, ``ordering:
"fifo"``, one lane), both in queue ``drain`` which no daemon serves yet; then a daemon serving
only ``drain`` starts in the region that delivers them (central: a; regional: b).

Measured, over the events published after the warm-up: publish latency per producer (the
``Client.publish`` call, p50/p99); publish-to-arrival latency per route, producer region ->
webhook region (arrival at the target - the payload's ``t``, one clock), p50/p99; jobs lost or
arriving twice; the daemons' CPU per 1,000 steady jobs (every daemon, from the first publish to
the last arrival). Drain: deliveries/s per webhook, from its first arrival to its last.
Variants alternate within each round, in an order rotated from round to round; each figure is
the median over the runs. Results: a table on the terminal, bench/results/regions-latest.{json,md};
the daemons' logs of each variant's last run in bench/results/worker-regions-<variant>-<n>.log.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.isolation import arrivals, log_events, quantile, source
from bench.run import (
    PY,
    RESULTS,
    ROOT,
    Progress,
    Redis,
    Target,
    cpu_seconds,
    free_port,
    machine,
    stop_process,
)
from bench.systems.common import payload
from dispatcher import Client

EVENT_TYPE = "bench.event"
REGIONS = ("a", "b")
BATCH = 256  # publish_many's events per call, for the backlogs
POLL_S = 0.25
STALL_S = 30.0  # no new arrival for this long: the run has stalled
READY_S = 60.0  # for the daemons to start, the registry to replicate and a probe to arrive
# Tenants, and the target's path of each webhook with the region it belongs to.
STEADY, DRAIN, FIFO = "regions-steady", "regions-drain", "regions-fifo"
PATHS = {
    "W_a": ("/ok/wa", "a"),
    "W_b": ("/ok/wb", "b"),
    "D_b": ("/ok/db", "b"),
    "F_b": ("/ok/fb", "b"),
}
# An event's seq says which producer (or backlog) published it.
SEQ_BASE = {"a": 0, "b": 10_000_000, "drain": 20_000_000, "fifo": 30_000_000}
ROUTES = tuple(f"{p}->{r}" for p in REGIONS for r in REGIONS)


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    label: str
    regional: bool


VARIANTS = {
    v.key: v
    for v in (
        Variant("central", "central (one Redis + daemon in a)", regional=False),
        Variant("regional", "regional (a Redis + daemon per region)", regional=True),
    )
}


@dataclass(frozen=True, slots=True)
class Settings:
    seconds: float
    warmup_s: float
    rate: float
    backlog: int
    fifo_backlog: int
    max_in_flight: int
    delay_ms: float
    payload_bytes: int
    proxy_module: str

    @property
    def events(self) -> int:
        """Events each producer publishes in the steady phase, warm-up included."""
        return round((self.warmup_s + self.seconds) * self.rate)


@dataclass
class Run:
    variant: str
    round: int
    prefix: str
    published: dict[str, int] = field(default_factory=dict)  # measured events, per producer
    refused: dict[str, int] = field(default_factory=dict)  # every failed publish, per producer
    #: publish_<producer>_p50/p99 (ms), arrival_<from>_<to>_p50/p99 (ms),
    #: drain_normal_per_s, drain_fifo_per_s, wcpu_s_per_1k
    figures: dict[str, float] = field(default_factory=dict)
    lost: int = 0  # jobs never arrived (steady and drain)
    duplicates: int = 0  # arrivals of a job beyond its first
    daemon_cpu_s: float = 0.0  # steady phase, every daemon
    proxy_cpu_s: float = 0.0  # steady phase, the three proxies
    drain_s: dict[str, float] = field(default_factory=dict)  # first to last arrival, per webhook
    load_1m_before: float = 0.0
    log_events: dict[str, dict[str, int]] = field(default_factory=dict)  # per daemon log
    error: str | None = None


# --- the world: Redis servers, the target, the delay proxies -------------------------------------


class Proxy:
    """``python -m tests.delay_proxy``: a TCP proxy that delays each direction by ``delay_ms``."""

    def __init__(self, name: str, upstream_port: int, delay_ms: float, module: str) -> None:
        self.name = name
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                module,
                "--listen",
                str(self.port),
                "--to",
                str(upstream_port),
                "--delay-ms",
                f"{delay_ms:g}",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the delay proxy {name} exited ({module}: is it there?)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the delay proxy {name} did not start")

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class World:
    """Everything every run shares: both Redis servers, the target and the proxies."""

    redis: dict[str, Redis]
    target: Target
    to_a: Proxy
    to_b: Proxy
    to_target: Proxy

    @classmethod
    def start(cls, settings: Settings) -> World:
        started: list[Redis | Target | Proxy] = []
        try:
            redis = {name: Redis() for name in REGIONS}
            started += redis.values()
            target = Target(0.0, "--record")
            started.append(target)
            proxies = []
            for name, port in (
                ("to_a", redis["a"].port),
                ("to_b", redis["b"].port),
                ("to_target", target.port),
            ):
                proxies.append(Proxy(name, port, settings.delay_ms, settings.proxy_module))
                started.append(proxies[-1])
            return cls(redis, target, *proxies)
        except BaseException:
            for thing in reversed(started):
                thing.stop()
            raise

    @property
    def proxies(self) -> list[Proxy]:
        return [self.to_a, self.to_b, self.to_target]

    def producer_url(self, variant: Variant, region: str) -> str:
        """The Redis a producer of ``region`` publishes to."""
        if variant.regional:
            return self.redis[region].url
        return self.redis["a"].url if region == "a" else self.to_a.redis_url

    def endpoint_base(self, variant: Variant, region: str) -> str:
        """How the daemon delivering ``region``'s webhooks reaches their endpoints."""
        if variant.regional or region == "a":
            return self.target.base
        return self.to_target.base  # b's endpoints, from a's daemon

    def region_urls(self, home: str) -> dict[str, str]:
        """``[regions]`` of a daemon in ``home``: its own Redis direct, the other's proxied."""
        other = {"a": self.to_a, "b": self.to_b}
        return {
            name: self.redis[name].url if name == home else other[name].redis_url
            for name in REGIONS
        }

    def flush(self) -> None:
        for server in self.redis.values():
            server.command("FLUSHALL")

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        self.target.stop()
        for server in self.redis.values():
            server.stop()


# --- daemons ----------------------------------------------------------------------------------


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_daemon(
    world: World,
    variant: Variant,
    *,
    region: str,
    prefix: str,
    queue: str,
    state_dir: Path,
    log: Path,
) -> Daemon:
    """``dispatcher run`` in ``region`` serving ``queue``: central, on a's Redis without
    regions; regional, with ``region`` and ``[regions]`` from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(
        {
            "DISPATCHER_STATE_DIR": str(state_dir),
            "DISPATCHER_REDIS_PREFIX": prefix,
            "DISPATCHER_ADMIN_LISTEN": "",
            "DISPATCHER_DELIVERY_QUEUES": queue,
            "DISPATCHER_SECURITY_ALLOW_PRIVATE_TARGETS": "true",
            "DISPATCHER_LOG_LEVEL": "info",
            "DISPATCHER_LOG_FORMAT": "json",
        }
    )
    if variant.regional:  # redis.url defaults to regions[region]
        env["DISPATCHER_REGION"] = region
        for name, url in world.region_urls(region).items():
            env[f"DISPATCHER_REGIONS_{name.upper()}"] = url
    else:
        env["DISPATCHER_REDIS_URL"] = world.redis["a"].url
    state_dir.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [PY, "-m", "dispatcher", "run"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    return Daemon(f"{region}-{queue}", proc, log)


def check_alive(daemons: list[Daemon]) -> None:
    for daemon in daemons:
        if daemon.proc.poll() is not None:
            tail = daemon.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(
                f"daemon {daemon.name} exited with {daemon.proc.returncode}: " + " | ".join(tail)
            )


# --- one run ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    seq: int
    due_s: float
    latency_ms: float | None  # None: refused or failed
    error: str | None = None


async def create_hooks(
    clients: dict[str, Client], world: World, variant: Variant, settings: Settings
) -> None:
    """W_a by a's producer, the b webhooks by b's, each with its region when regional."""
    for name, (path, region) in PATHS.items():
        fields: dict[str, Any] = {"region": region} if variant.regional else {}
        tenant = STEADY
        if name == "D_b":
            tenant, fields = (
                DRAIN,
                {**fields, "queue": "drain", "max_in_flight": settings.max_in_flight},
            )
        elif name == "F_b":
            tenant, fields = FIFO, {**fields, "queue": "drain", "ordering": "fifo"}
        url = world.endpoint_base(variant, region) + path
        await clients[region].create_webhook(tenant, url, **fields)


async def wait_routed(
    clients: dict[str, Client],
    world: World,
    session: aiohttp.ClientSession,
    daemons: list[Daemon],
) -> None:
    """A probe from each producer until the publish matches both steady webhooks, then until
    it arrives at both: the records have replicated, the daemons serve, the relay carries."""
    deadline = time.monotonic() + READY_S
    seqs = itertools.count(-1, -1)
    last: list[int] = []
    for client in clients.values():
        while True:
            seq = next(seqs)
            answer = await client.publish(STEADY, EVENT_TYPE, payload(seq, 100))
            if answer["matched"] == 2:
                last.append(seq)
                break
            check_alive(daemons)
            if time.monotonic() > deadline:
                raise RuntimeError(f"a probe matched {answer['matched']} of 2 webhooks")
            await asyncio.sleep(0.2)
    wanted = {(PATHS[name][0], seq) for name in ("W_a", "W_b") for seq in last}
    while not wanted <= {(path, seq) for path, seq, *_ in await arrivals(world.target, session)}:
        check_alive(daemons)
        if time.monotonic() > deadline:
            raise RuntimeError("the probes did not arrive at both webhooks")
        await asyncio.sleep(0.1)
    await world.target.reset(session)


async def produce(client: Client, producer: str, settings: Settings) -> list[Sent]:
    """``settings.events`` publishes at ``settings.rate``/s, each timed on its own."""

    async def one(seq: int, due_s: float) -> Sent:
        started = time.perf_counter()
        try:
            await client.publish(STEADY, EVENT_TYPE, payload(seq, settings.payload_bytes))
        except Exception as exc:  # counted as refused; the run goes on
            return Sent(seq, due_s, None, f"{type(exc).__name__}: {exc}"[:200])
        return Sent(seq, due_s, (time.perf_counter() - started) * 1000)

    tasks = []
    started = time.perf_counter()
    for i in range(settings.events):
        due_s = i / settings.rate
        wait = started + due_s - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(SEQ_BASE[producer] + i, due_s)))
    return list(await asyncio.gather(*tasks))


async def wait_arrived(
    world: World,
    session: aiohttp.ClientSession,
    expected: set[tuple[str, int]],
    daemons: list[Daemon],
    label: str,
) -> list[list[Any]]:
    """Until every (path, seq) expected has arrived; the target's arrivals. Raises when a daemon
    exits or arrivals stop for ``STALL_S``."""
    counts: dict[str, int] = {}
    for path, _ in expected:
        counts[path] = counts.get(path, 0) + 1
    progress = Progress(label, len(expected))
    last_ok, last_change = -1, time.monotonic()
    while True:
        stats = await world.target.stats(session)
        paths: dict[str, int] = stats["paths"]
        progress.show(min(sum(min(paths.get(p, 0), n) for p, n in counts.items()), len(expected)))
        if all(paths.get(p, 0) >= n for p, n in counts.items()):
            seen = await arrivals(world.target, session)
            if expected <= {(path, seq) for path, seq, *_ in seen}:
                return seen
        if stats["ok"] != last_ok:
            last_ok, last_change = stats["ok"], time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            progress.show(len(expected))
            seen = await arrivals(world.target, session)
            missing = len(expected - {(path, seq) for path, seq, *_ in seen})
            raise RuntimeError(f"stalled: {missing} of {len(expected)} jobs missing")
        check_alive(daemons)
        await asyncio.sleep(POLL_S)


def _p50_p99(samples: list[float]) -> tuple[float, float] | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(quantile(ordered, 0.50), 2), round(quantile(ordered, 0.99), 2)


def steady_figures(
    run: Run, sent: dict[str, list[Sent]], seen: list[list[Any]], settings: Settings
) -> None:
    """Publish and publish-to-arrival latency of the events due after the warm-up."""
    measured: dict[int, str] = {}  # seq -> producer
    for producer, events in sent.items():
        ok = [s for s in events if s.latency_ms is not None]
        run.refused[producer] = len(events) - len(ok)
        kept = [s for s in ok if s.due_s >= settings.warmup_s]
        run.published[producer] = len(kept)
        measured.update((s.seq, producer) for s in kept)
        figures = _p50_p99([s.latency_ms for s in kept if s.latency_ms is not None])
        if figures:
            run.figures[f"publish_{producer}_p50"], run.figures[f"publish_{producer}_p99"] = figures
    region_of_path = {PATHS[name][0]: PATHS[name][1] for name in ("W_a", "W_b")}
    first: dict[tuple[str, int], float] = {}  # (path, seq) -> latency ms
    for path, seq, t, arrived in seen:
        if seq not in measured or path not in region_of_path:
            continue
        if (path, seq) in first:
            run.duplicates += 1
        else:
            first[(path, seq)] = (float(arrived) - float(t)) * 1000
    run.lost += 2 * len(measured) - len(first)
    by_route: dict[str, list[float]] = {route: [] for route in ROUTES}
    for (path, seq), latency in first.items():
        by_route[f"{measured[seq]}->{region_of_path[path]}"].append(latency)
    for route, samples in by_route.items():
        figures = _p50_p99(samples)
        if figures:
            name = "arrival_" + route.replace("->", "_")
            run.figures[f"{name}_p50"], run.figures[f"{name}_p99"] = figures


def drain_figures(run: Run, seen: list[list[Any]], expected: set[tuple[str, int]]) -> None:
    """Deliveries/s of each drained webhook, first arrival to last."""
    times: dict[str, dict[int, float]] = {}
    for path, seq, _t, arrived in seen:
        if (path, seq) not in expected:
            continue
        per_path = times.setdefault(path, {})
        if seq in per_path:
            run.duplicates += 1
        else:
            per_path[seq] = float(arrived)
    run.lost += len(expected) - sum(len(v) for v in times.values())
    for name, key in (("D_b", "normal"), ("F_b", "fifo")):
        got = sorted(times.get(PATHS[name][0], {}).values())
        if len(got) >= 2:
            span = got[-1] - got[0]
            run.drain_s[name] = round(span, 3)
            run.figures[f"drain_{key}_per_s"] = round((len(got) - 1) / max(span, 1e-9), 1)


async def publish_backlog(client: Client, tenant: str, first_seq: int, n: int, size: int) -> None:
    for start in range(0, n, BATCH):
        answers = await client.publish_many(
            {"tenant_id": tenant, "event_type": EVENT_TYPE, "payload": payload(first_seq + i, size)}
            for i in range(start, min(n, start + BATCH))
        )
        refused = [a for a in answers if not isinstance(a, dict)]
        if refused:
            raise RuntimeError(f"{len(refused)} backlog events not accepted: {refused[0]}")


async def run_variant(
    *,
    variant: Variant,
    round_no: int,
    settings: Settings,
    world: World,
    session: aiohttp.ClientSession,
) -> Run:
    run = Run(variant.key, round_no, f"regions-{round_no}-{secrets.token_hex(3)}")
    run.load_1m_before = round(os.getloadavg()[0], 2)
    daemons: list[Daemon] = []
    homes = REGIONS if variant.regional else ("a",)
    logs = {n: RESULTS / f"worker-regions-{variant.key}-{n}.log" for n in (*homes, "drain")}
    for log in logs.values():
        log.write_bytes(b"")
    clients = {
        r: Client.from_url(world.producer_url(variant, r), prefix=run.prefix) for r in REGIONS
    }
    try:
        with tempfile.TemporaryDirectory(prefix="dispatcher-regions-") as tmp:
            if variant.regional:  # as each region's `dispatcher run` does at start
                for region, client in clients.items():
                    await client.store.adopt_region(region, REGIONS)
            daemons += [
                start_daemon(
                    world,
                    variant,
                    region=home,
                    prefix=run.prefix,
                    queue="default",
                    state_dir=Path(tmp) / home,
                    log=logs[home],
                )
                for home in homes
            ]
            await create_hooks(clients, world, variant, settings)
            await wait_routed(clients, world, session, daemons)
            await steady(run, clients, world, session, daemons=daemons, settings=settings)
            drain_home = "b" if variant.regional else "a"
            await world.target.reset(session)
            await publish_backlog(
                clients["b"], DRAIN, SEQ_BASE["drain"], settings.backlog, settings.payload_bytes
            )
            await publish_backlog(
                clients["b"], FIFO, SEQ_BASE["fifo"], settings.fifo_backlog, settings.payload_bytes
            )
            daemons.append(
                start_daemon(
                    world,
                    variant,
                    region=drain_home,
                    prefix=run.prefix,
                    queue="drain",
                    state_dir=Path(tmp) / "drain",
                    log=logs["drain"],
                )
            )
            expected = {(PATHS["D_b"][0], SEQ_BASE["drain"] + i) for i in range(settings.backlog)}
            expected |= {
                (PATHS["F_b"][0], SEQ_BASE["fifo"] + i) for i in range(settings.fifo_backlog)
            }
            label = f"{variant.key} #{round_no + 1} drain"
            seen = await wait_arrived(world, session, expected, daemons, label)
            drain_figures(run, seen, expected)
    except Exception as exc:  # a failed run is reported, the others still run
        run.error = str(exc)[:300]
        sys.stderr.write(f"\n  {variant.label}: {run.error}\n")
    finally:
        for daemon in daemons:
            stop_process(daemon.proc)
        for client in clients.values():
            await client.close()
        world.flush()
    run.log_events = {name: log_events(log) for name, log in logs.items() if log.exists()}
    return run


async def steady(
    run: Run,
    clients: dict[str, Client],
    world: World,
    session: aiohttp.ClientSession,
    *,
    daemons: list[Daemon],
    settings: Settings,
) -> None:
    cpu_before = sum(cpu_seconds(d.proc.pid) for d in daemons)
    proxy_before = sum(p.cpu() for p in world.proxies)
    sent = dict(
        zip(
            clients,
            await asyncio.gather(*(produce(c, r, settings) for r, c in clients.items())),
            strict=True,
        )
    )
    accepted = [s.seq for events in sent.values() for s in events if s.latency_ms is not None]
    expected = {(PATHS[name][0], seq) for name in ("W_a", "W_b") for seq in accepted}
    label = f"{run.variant} #{run.round + 1} steady"
    seen = await wait_arrived(world, session, expected, daemons, label)
    run.daemon_cpu_s = round(sum(cpu_seconds(d.proc.pid) for d in daemons) - cpu_before, 2)
    run.proxy_cpu_s = round(sum(p.cpu() for p in world.proxies) - proxy_before, 2)
    run.figures["wcpu_s_per_1k"] = round(run.daemon_cpu_s / max(len(expected), 1) * 1000, 3)
    steady_figures(run, sent, seen, settings)


# --- the report --------------------------------------------------------------------------------


def median_figures(runs: list[Run], variant: str) -> dict[str, float]:
    """Each figure's median over the variant's runs that have it."""
    values: dict[str, list[float]] = {}
    for run in runs:
        if run.variant == variant and not run.error:
            for name, value in run.figures.items():
                values.setdefault(name, []).append(value)
    return {name: round(statistics.median(v), 3) for name, v in values.items()}


def _pair(figures: dict[str, float], name: str) -> str:
    p50, p99 = figures.get(f"{name}_p50"), figures.get(f"{name}_p99")
    if p50 is None or p99 is None:
        return "-"
    return f"{p50:,.1f} / {p99:,.1f}"


def _rate(figures: dict[str, float], name: str) -> str:
    value = figures.get(name)
    return "-" if value is None else f"{value:,.0f}"


def table(runs: list[Run], variants: list[Variant]) -> str:
    head = (
        "variant",
        "publish a ms",
        "publish b ms",
        "a→a ms",
        "a→b ms",
        "b→a ms",
        "b→b ms",
        "drain D_b /s",
        "drain F_b /s (FIFO)",
        "wCPU s/1k",
        "lost",
        "dups",
        "runs",
    )
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for variant in variants:
        group = [r for r in runs if r.variant == variant.key]
        ok = [r for r in group if not r.error]
        if not ok:
            error = group[0].error if group else "not run"
            lines.append(f"{variant.key} | error: {(error or '')[:120]}" + " |" * (len(head) - 2))
            continue
        f = median_figures(runs, variant.key)
        lines.append(
            " | ".join(
                [
                    variant.key,
                    _pair(f, "publish_a"),
                    _pair(f, "publish_b"),
                    *(_pair(f, "arrival_" + route.replace("->", "_")) for route in ROUTES),
                    _rate(f, "drain_normal_per_s"),
                    _rate(f, "drain_fifo_per_s"),
                    f"{f.get('wcpu_s_per_1k', 0):.3f}",
                    str(sum(r.lost for r in ok)),
                    str(sum(r.duplicates for r in ok)),
                    f"{len(ok)}/{len(group)}",
                ]
            )
        )
    return "\n".join(lines)


def markdown(
    runs: list[Run],
    variants: list[Variant],
    *,
    settings: Settings,
    info: dict[str, Any],
    src: dict[str, Any],
    seconds: float,
    rounds: int,
) -> str:
    changes = " with uncommitted changes in dispatcher/" if src["dispatcher_dirty"] else ""
    setup = (
        f"`python -m bench.regions --seconds {settings.seconds:g} --rate {settings.rate:g}"
        f" --runs {rounds} --variants {','.join(v.key for v in variants)}`: regions a and b on"
        f" one machine, every link between them through a TCP proxy adding"
        f" {settings.delay_ms:g} ms each way (a round trip {2 * settings.delay_ms:g} ms). A"
        f" producer in each region publishes {settings.rate:g} events/s for"
        f" {settings.warmup_s:g} + {settings.seconds:g} s (the first {settings.warmup_s:g} s not"
        f" measured), each event a job for W_a (region a) and W_b (region b); then b's producer"
        f" queues {settings.backlog:,} events for D_b (region b, max_in_flight"
        f" {settings.max_in_flight}) and {settings.fifo_backlog:,} for F_b (region b, FIFO, one"
        f" lane), and a daemon drains them. central: one Redis and daemon in a; b's producer and"
        f" b's endpoints are across the proxy. regional: a Redis and daemon per region, local"
        f" publishes, a's jobs for b relayed through a's outbox (and b's for a through b's)."
        f" {rounds} round(s), variants alternating; each figure the median over the runs"
        f" ({seconds:.0f} s in all).\n"
        f"Machine: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, {info['redis']};"
        f" dispatcher {src['version']} at {src['commit'] or 'an unknown commit'}{changes}."
    )
    measure = (
        "`publish x ms`: the `Client.publish` call of x's producer, p50 / p99. `x→y ms`: from"
        " publish (the payload's `t`) to arrival at the target, for events published in x to"
        " the webhook of region y, p50 / p99. `drain ... /s`: deliveries per second of that"
        " webhook's backlog, first arrival to last. `wCPU s/1k`: every daemon's CPU per 1,000"
        " steady-phase jobs (the relay's work included), from the first publish to the last"
        " arrival. `lost`/`dups`: jobs never arrived, or arrived more than once, summed over"
        " the runs."
    )
    noise = (
        "Everything (both Redis servers, the proxies, the target, the producers and the daemons)"
        " shares the machine's cores; the injected delay, not the machine, dominates the"
        " cross-region figures. Expect +-20% between runs on the local ones."
    )
    failed = [f"- {r.variant} #{r.round + 1}: {r.error}" for r in runs if r.error]
    parts = [
        "# Regions: one central deployment against region-local dispatch",
        setup,
        measure,
        table(runs, variants),
        noise,
        "\n".join(failed),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


# --- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)}",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured steady phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="steady phase not measured")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s per producer")
    parser.add_argument("--runs", type=int, default=3, help="rounds over all variants (median)")
    parser.add_argument("--backlog", type=int, default=2000, help="events drained to D_b")
    parser.add_argument("--fifo-backlog", type=int, default=200, help="events drained to F_b")
    parser.add_argument("--max-in-flight", type=int, default=8, help="D_b's max_in_flight")
    parser.add_argument("--delay-ms", type=float, default=40.0, help="each way, between regions")
    parser.add_argument("--payload-bytes", type=int, default=300)
    parser.add_argument(
        "--proxy-module",
        default="tests.delay_proxy",
        help="the delay proxy: python -m MODULE --listen P --to P --delay-ms N",
    )
    return parser.parse_args()


async def main_async(
    variants: list[Variant], rounds: int, settings: Settings, world: World
) -> list[Run]:
    runs = []
    async with aiohttp.ClientSession() as session:
        for round_no in range(rounds):
            shift = round_no % len(variants)  # each round starts with another variant
            for variant in variants[shift:] + variants[:shift]:
                run = await run_variant(
                    variant=variant, round_no=round_no, settings=settings, world=world,
                    session=session,
                )  # fmt: skip
                runs.append(run)
    return runs


def main() -> None:
    args = parse_args()
    keys = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(keys) - set(VARIANTS)
    if unknown or not keys:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown)) or '(none given)'}")
    if args.seconds <= 0 or args.rate <= 0 or args.runs < 1:
        raise SystemExit("--seconds and --rate must be positive, --runs at least 1")
    if min(args.backlog, args.fifo_backlog) < 2:
        raise SystemExit("--backlog and --fifo-backlog must be at least 2")
    variants = [VARIANTS[k] for k in keys]
    settings = Settings(
        seconds=args.seconds,
        warmup_s=args.warmup,
        rate=args.rate,
        backlog=args.backlog,
        fifo_backlog=args.fifo_backlog,
        max_in_flight=args.max_in_flight,
        delay_ms=args.delay_ms,
        payload_bytes=args.payload_bytes,
        proxy_module=args.proxy_module,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    world = World.start(settings)
    try:
        runs = asyncio.run(main_async(variants, args.runs, settings, world))
    finally:
        world.stop()
    seconds = time.monotonic() - started
    info, src = machine(), source()
    print()
    print(table(runs, variants))
    report = {
        "machine": info,
        "dispatcher": src,
        "settings": asdict(settings),
        "runs_per_variant": args.runs,
        "seconds": round(seconds, 1),
        "rows": {v.key: median_figures(runs, v.key) for v in variants},
        "runs": [asdict(r) for r in runs],
    }
    (RESULTS / "regions-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(
        runs, variants, settings=settings, info=info, src=src, seconds=seconds, rounds=args.runs
    )
    (RESULTS / "regions-latest.md").write_text(text)
    print(f"\nresults: {RESULTS / 'regions-latest.md'}, {RESULTS / 'regions-latest.json'}")


if __name__ == "__main__":
    main()
