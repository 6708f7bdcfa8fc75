"""Isolation: does one bad webhook endpoint slow delivery to the healthy ones?

    python -m bench.isolation                            # 20 s measured per variant, 500 events/s
    python -m bench.isolation --seconds 5 --warmup 2     # a quick look (about a minute)
    python -m bench.isolation --variants baseline,hang --set delivery.breaker_open_s=5
    python -m bench.isolation --variants baseline,hang,tail --seconds 10 --warmup 3 --repeat 3

One ``dispatcher run`` process on a fresh redis-server, and bench/target.py on loopback serving
``--healthy`` webhooks that answer 200 at once. Events go round-robin over the healthy webhooks
and one more slot, in an order shuffled per round with ``--seed``; each webhook has a tenant of
its own, so an event is one job. The extra slot is the bad webhook, which gets its share of the
events from the end of the warm-up on:

- ``baseline``  no bad webhook: its slot is skipped, so healthy traffic is the same in all runs
- ``hang``      accepts the request and never answers: each attempt holds a slot for timeout_s
- ``refused``   a closed port: every attempt fails at once with connection refused
- ``slow-500``  answers 500 after ``--slow-s`` (1 s)
- ``slow-200``  answers 200 after ``--slow-s``: slow but never failing, so no breaker trips and
  the endpoint holds about rate/(healthy+1) * slow_s delivery slots the whole time
- ``tail``      not a latency run but a throughput one, on a fresh redis-server and daemon
  each: one webhook gets a backlog of ``--tail-events`` events (published at once after the
  daemon is up), first on an endpoint that answers 200 after 20 ms (``/lat/``), then on one
  where a seeded 1 request in 50 takes 400 ms (``/tail/``, an ordinary p99 tail). Measured:
  deliveries/s as the rate requests reached the endpoint, first to last (the time to the last
  answer, which a slow last answer stretches by up to 400 ms whatever the backlog, is shown
  apart as ``drained s``), the tailed endpoint's as a share of the
  untailed one's (it must keep at least 80%), the daemon's deferrals (``/metrics``,
  ``dispatcher_deferred_total``) and the most requests the endpoint held at once. Keep the
  pool large (the default 256): when the lanes themselves are the bound (64 lanes at over
  3,000/s here), a 2% tail of 400 ms costs about 28% by Little's law whatever the policy does
  (mean answer 27.6 ms instead of 20), which measures the lanes and not traffic control.

Measured, for healthy webhooks only and for events published after the warm-up: latency =
arrival at the target - publish time (the payload's ``t``; wall clock, one machine), as p50,
p95, p99 and max, and how many arrived. An event not delivered by the end of the drain counts
as infinitely late in the percentiles. Each variant is compared with the baseline.
Results: a table on the terminal, bench/results/isolation-latest.{json,md}; the daemon's log of
each run in bench/results/worker-isolation-<variant>.log.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.run import (
    PY,
    RESULTS,
    ROOT,
    Redis,
    Target,
    cpu_seconds,
    free_port,
    machine,
    stop_process,
)
from bench.systems.common import payload
from dispatcher import Client, __version__

PREFIX = "isolation"
EVENT_TYPE = "bench.event"
VARIANTS = ("baseline", "hang", "refused", "slow-500", "slow-200", "tail")
TAIL_PATHS = {"no tail": "lat", "2% tail": "tail"}  # the throughput runs of ``tail``
TAIL_KEEPS = 0.8  # the share of its throughput an endpoint with a p99 tail must keep
BAD_PATHS = {"hang": "hang", "refused": "refused", "slow-500": "slow", "slow-200": "slowok"}
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99, "max": 1.0}
TICK_S = 0.005


@dataclass(frozen=True, slots=True)
class Settings:
    rate: float
    seconds: float
    warmup_s: float
    drain_s: float
    healthy: int
    timeout_s: float
    concurrency: int | None
    slow_s: float
    payload_bytes: int
    seed: int
    overrides: dict[str, dict[str, Any]]
    tail_events: int = 20_000
    lat_s: float = 0.02
    tail_s: float = 0.4
    tail_share: float = 0.02


@dataclass(frozen=True, slots=True)
class Slot:
    """One event of the plan: its ``seq``, when it is due (s from the start) and its webhook."""

    seq: int
    due_s: float
    hook: int  # 0 .. healthy-1 are healthy, ``healthy`` is the bad webhook


@dataclass
class Run:
    variant: str
    healthy_published: int = 0
    healthy_delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    bad_published: int = 0
    bad_requests: int | None = None  # attempts that reached the bad endpoint (None: refused)
    daemon_cpu_s: float = 0.0  # from the first delivery to the end of the drain
    publish_lag_max_ms: float = 0.0
    load_1m_before: float = 0.0
    by_second: list[dict[str, float | int | None]] = field(default_factory=list)
    log_events: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Throughput:
    """One throughput run of the ``tail`` variant: a backlog to one webhook."""

    endpoint: str  # "no tail" or "2% tail"
    events: int = 0
    delivered: int = 0
    seconds: float | None = None  # first request received to last
    drained_s: float | None = None  # first request received to last answer
    per_s: float | None = None
    deferred: dict[str, int] = field(default_factory=dict)  # by reason, from /metrics
    peak_held: int = 0  # the most requests the endpoint held at once
    daemon_cpu_s: float = 0.0
    load_1m_before: float = 0.0
    error: str | None = None


# --- the plan and the daemon -------------------------------------------------------------------


def plan(settings: Settings, bad: bool) -> list[Slot]:
    """Every event of a run, in publish order; the same healthy events whatever ``bad`` is."""
    rng = random.Random(settings.seed)
    hooks = settings.healthy + 1
    step_s = 1 / settings.rate
    total = int(settings.rate * (settings.warmup_s + settings.seconds))
    slots: list[Slot] = []
    order: list[int] = []
    for seq in range(total):
        if seq % hooks == 0:
            order = list(range(hooks))
            rng.shuffle(order)
        hook, due_s = order[seq % hooks], seq * step_s
        if hook == settings.healthy and (not bad or due_s < settings.warmup_s):
            continue
        slots.append(Slot(seq, due_s, hook))
    return slots


def config_toml(settings: Settings, redis_url: str, state_dir: Path, admin: str = "") -> str:
    sections: dict[str, dict[str, Any]] = {
        "": {"state_dir": str(state_dir)},
        "redis": {"url": redis_url, "prefix": PREFIX},
        "admin": {"listen": admin},
        "delivery": {"timeout_s": settings.timeout_s},
        "security": {"allow_private_targets": True},
        "log": {"level": "info", "format": "json"},
    }
    if settings.concurrency is not None:
        sections["delivery"]["concurrency"] = settings.concurrency
    for section, values in settings.overrides.items():
        sections.setdefault(section, {}).update(values)
    lines = [f"{key} = {json.dumps(value)}" for key, value in sections.pop("").items()]
    for section, values in sections.items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [PY, "-m", "dispatcher", "run", "--config", str(config)],
            cwd=ROOT, env=env, stdout=out, stderr=out,
        )


def source() -> dict[str, Any]:
    """Which dispatcher was measured: the commit, and whether dispatcher/ had local changes."""
    def git(*args: str) -> str | None:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", "dispatcher")
    return {"version": __version__, "commit": git("rev-parse", "--short", "HEAD"),
            "dispatcher_dirty": None if status is None else bool(status)}


def log_events(log: Path) -> dict[str, int]:
    """How often each event name appears in the daemon's JSON log."""
    counts: Counter[str] = Counter()
    for line in log.read_bytes().splitlines():
        try:
            counts[str(json.loads(line)["event"])] += 1
        except (ValueError, KeyError, TypeError):
            counts["(not json)"] += 1
    return dict(counts.most_common())


# --- publishing and waiting ---------------------------------------------------------------------


async def create_hooks(client: Client, urls: list[str]) -> list[str]:
    """One tenant per webhook; returns the tenant ids, in the order of ``urls``."""
    tenants = [f"iso-{i:02d}" for i in range(len(urls))]
    for tenant, url in zip(tenants, urls, strict=True):
        await client.create_webhook(tenant, url)
    return tenants


async def publish(client: Client, tenants: list[str], slots: list[Slot], size: int) -> float:
    """Publish every slot when it falls due, batched per tick; returns the worst lag in ms."""
    dues = [slot.due_s for slot in slots]
    started = time.perf_counter()
    lag_max_s, sent = 0.0, 0
    while sent < len(slots):
        now_s = time.perf_counter() - started
        due = bisect.bisect_right(dues, now_s)
        if due <= sent:
            await asyncio.sleep(min(TICK_S, dues[sent] - now_s))
            continue
        lag_max_s = max(lag_max_s, now_s - dues[sent])
        answers = await client.publish_many(
            {"tenant_id": tenants[slot.hook], "event_type": EVENT_TYPE,
             "payload": payload(slot.seq, size)}
            for slot in slots[sent:due]
        )
        refused = [a for a in answers if not isinstance(a, dict)]
        if refused:
            raise RuntimeError(f"{len(refused)} events not accepted: {refused[0]}")
        sent = due
    return lag_max_s * 1000


async def wait_ready(client: Client, tenant: str, target: Target,
                     session: aiohttp.ClientSession, daemon: subprocess.Popen[bytes]) -> None:
    """Publish one probe event and wait for it: the daemon is then connected and serving."""
    await client.publish(tenant, EVENT_TYPE, payload(-1, 100))
    deadline = time.monotonic() + 30
    while (await target.stats(session))["ok"] < 1:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} (see its log)")
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon did not deliver a probe event within 30 s")
        await asyncio.sleep(0.05)
    await target.reset(session)


async def wait_delivered(target: Target, session: aiohttp.ClientSession, expected: int,
                         timeout_s: float, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while (await target.stats(session))["unique"] < expected and time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} (see its log)")
        await asyncio.sleep(0.2)


async def arrivals(target: Target, session: aiohttp.ClientSession) -> list[list[Any]]:
    async with session.get(f"{target.base}/arrivals") as resp:
        data: list[list[Any]] = await resp.json()
        return data


# --- figures ----------------------------------------------------------------------------------


def quantile(ordered: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the samples at or below it."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarise(run: Run, slots: list[Slot], seen: list[list[Any]], settings: Settings) -> None:
    measured = {s.seq for s in slots if s.hook < settings.healthy and s.due_s >= settings.warmup_s}
    first: dict[int, tuple[float, float]] = {}  # seq -> (publish t, arrival)
    for path, seq, t, arrived in seen:
        if not str(path).startswith("/ok/") or seq not in measured:
            continue
        if seq in first:
            run.duplicates += 1
        else:
            first[seq] = (float(t), float(arrived))
    run.healthy_published = len(measured)
    run.healthy_delivered = len(first)
    run.missing = len(measured) - len(first)
    latencies = sorted((arrived - t) * 1000 for t, arrived in first.values())
    ordered = latencies + [math.inf] * run.missing
    if ordered:
        for name, q in QUANTILES.items():
            setattr(run, f"{name}_ms", round(quantile(ordered, q), 2))
    run.by_second = _by_second(first, slots, settings)
    if run.variant in BAD_PATHS:
        run.bad_published = sum(1 for s in slots if s.hook == settings.healthy)
    if run.variant in BAD_PATHS and run.variant != "refused":
        bad = f"/{BAD_PATHS[run.variant]}/"
        run.bad_requests = sum(1 for path, *_ in seen if str(path).startswith(bad))


def _by_second(first: dict[int, tuple[float, float]], slots: list[Slot],
               settings: Settings) -> list[dict[str, float | int | None]]:
    """p50 and p99 of the healthy events due in each second of the measured window."""
    due = {s.seq: s.due_s for s in slots}
    buckets: dict[int, list[float]] = {}
    for seq, (t, arrived) in first.items():
        buckets.setdefault(int(due[seq] - settings.warmup_s), []).append((arrived - t) * 1000)
    rows: list[dict[str, float | int | None]] = []
    for second in range(math.ceil(settings.seconds)):
        values = sorted(buckets.get(second, []))
        rows.append({
            "second": second, "delivered": len(values),
            "p50_ms": round(quantile(values, 0.5), 2) if values else None,
            "p99_ms": round(quantile(values, 0.99), 2) if values else None,
        })
    return rows


# --- one run ----------------------------------------------------------------------------------


async def run_variant(variant: str, settings: Settings, target: Target,
                      session: aiohttp.ClientSession) -> Run:
    run = Run(variant, load_1m_before=round(os.getloadavg()[0], 2))
    if variant == "refused":
        bad_url = f"http://127.0.0.1:{free_port()}/refused/0"  # nothing listens there
    else:
        bad_url = f"{target.base}/{BAD_PATHS.get(variant, 'ok')}/bad"
    urls = [f"{target.base}/ok/{i}" for i in range(settings.healthy)] + [bad_url]
    slots = plan(settings, bad=variant != "baseline")
    log = RESULTS / f"worker-isolation-{variant}.log"
    redis = Redis()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="dispatcher-isolation-") as tmp:
            config = Path(tmp) / "dispatcher.toml"
            config.write_text(config_toml(settings, redis.url, Path(tmp) / "var"))
            async with Client.from_url(redis.url, prefix=PREFIX) as client:
                tenants = await create_hooks(client, urls)
                await target.reset(session)
                daemon = start_daemon(config, log)
                await wait_ready(client, tenants[0], target, session, daemon)
                cpu_at_ready = cpu_seconds(daemon.pid)
                sys.stderr.write(f"  {variant}: publishing {len(slots)} events over "
                                 f"{settings.warmup_s + settings.seconds:.0f} s\n")
                run.publish_lag_max_ms = round(
                    await publish(client, tenants, slots, settings.payload_bytes), 1)
            healthy = sum(1 for s in slots if s.hook < settings.healthy)
            await wait_delivered(target, session, healthy, settings.drain_s, daemon)
            run.daemon_cpu_s = round(cpu_seconds(daemon.pid) - cpu_at_ready, 2)
            summarise(run, slots, await arrivals(target, session), settings)
    except Exception as exc:  # a failed variant is reported, the others still run
        run.error = str(exc)[:300]
        sys.stderr.write(f"  {variant}: {run.error}\n")
    finally:
        if daemon is not None:
            stop_process(daemon)
        redis.stop()
    if log.exists():
        run.log_events = log_events(log)
    return run


async def run_throughput(endpoint: str, settings: Settings, target: Target,
                         session: aiohttp.ClientSession) -> Throughput:
    """A backlog of ``tail_events`` to one webhook at ``TAIL_PATHS[endpoint]``: deliveries/s."""
    run = Throughput(endpoint, settings.tail_events, load_1m_before=round(os.getloadavg()[0], 2))
    path = TAIL_PATHS[endpoint]
    log = RESULTS / f"worker-isolation-tail-{path}.log"
    admin = f"127.0.0.1:{free_port()}"
    redis = Redis()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="dispatcher-isolation-") as tmp:
            config = Path(tmp) / "dispatcher.toml"
            config.write_text(config_toml(settings, redis.url, Path(tmp) / "var", admin))
            async with Client.from_url(redis.url, prefix=PREFIX) as client:
                probe, tenant = await create_hooks(
                    client, [f"{target.base}/ok/probe", f"{target.base}/{path}/0"])
                await target.reset(session)
                daemon = start_daemon(config, log)
                await wait_ready(client, probe, target, session, daemon)
                cpu_at_ready = cpu_seconds(daemon.pid)
                sys.stderr.write(f"  tail, {endpoint}: a backlog of {run.events} events\n")
                for start in range(0, run.events, 1000):
                    await client.publish_many(
                        {"tenant_id": tenant, "event_type": EVENT_TYPE,
                         "payload": payload(seq, settings.payload_bytes)}
                        for seq in range(start, min(run.events, start + 1000)))
                await wait_delivered(target, session, run.events, settings.drain_s * 10, daemon)
                run.daemon_cpu_s = round(cpu_seconds(daemon.pid) - cpu_at_ready, 2)
                stats = await target.stats(session)
                seen = sorted(float(at) for p, *_, at in await arrivals(target, session)
                              if str(p).startswith(f"/{path}/"))
                run.deferred = await deferrals(session, admin)
            run.delivered, run.peak_held = int(stats["unique"]), int(stats["peak_held"])
            if len(seen) > 1:
                run.seconds = round(seen[-1] - seen[0], 2)
                run.drained_s = round(float(stats["last_at"]) - seen[0], 2)
                run.per_s = round((len(seen) - 1) / run.seconds, 1) if run.seconds else None
            if run.delivered < run.events:
                run.error = f"{run.events - run.delivered} events undelivered after the drain"
    except Exception as exc:  # a failed run is reported, the others still run
        run.error = str(exc)[:300]
        sys.stderr.write(f"  tail, {endpoint}: {run.error}\n")
    finally:
        if daemon is not None:
            stop_process(daemon)
        redis.stop()
    return run


async def deferrals(session: aiohttp.ClientSession, admin: str) -> dict[str, int]:
    """``dispatcher_deferred_total`` by reason, from the daemon's ``/metrics``."""
    async with session.get(f"http://{admin}/metrics") as resp:
        text = await resp.text()
    found: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("dispatcher_deferred_total{"):
            labels, _, value = line.rpartition(" ")
            reason = labels.partition('reason="')[2].partition('"')[0]
            found[reason] = int(float(value))
    return found


# --- the report --------------------------------------------------------------------------------


def median_runs(runs: list[Run]) -> list[Run]:
    """One row per variant: the run with the median p99 (undelivered events count as slowest)."""
    rows = []
    for variant in dict.fromkeys(r.variant for r in runs):
        group = [r for r in runs if r.variant == variant]
        ok = sorted((r for r in group if not r.error), key=_p99_or_inf)
        rows.append(ok[len(ok) // 2] if ok else group[0])
    return rows


def _p99_or_inf(run: Run) -> float:
    return math.inf if run.p99_ms is None else run.p99_ms


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return "undelivered" if math.isinf(value) else f"{value:,.1f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base or math.isinf(base):
        return "-"
    return "inf" if math.isinf(value) else f"{value / base:.2f}x"


def table(rows: list[Run]) -> str:
    head = ("variant", "healthy delivered", "missing", "p50 ms", "p95 ms", "p99 ms", "max ms",
            "bad events", "bad requests", "daemon CPU s", "publish lag max ms", "load 1m")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        if r.error:
            lines.append(f"{r.variant} | error: {r.error[:80]} |" + " |" * (len(head) - 2))
            continue
        lines.append(" | ".join([
            r.variant, f"{r.healthy_delivered:,}/{r.healthy_published:,}", str(r.missing),
            _ms(r.p50_ms), _ms(r.p95_ms), _ms(r.p99_ms), _ms(r.max_ms),
            str(r.bad_published) if r.variant in BAD_PATHS else "-",
            "-" if r.bad_requests is None else str(r.bad_requests),
            f"{r.daemon_cpu_s:.2f}", f"{r.publish_lag_max_ms:.1f}", f"{r.load_1m_before:.2f}",
        ]))
    return "\n".join(lines)


def ratios(rows: list[Run]) -> str:
    base = next((r for r in rows if r.variant == "baseline" and not r.error), None)
    if base is None:
        return "(no baseline run: no ratios)"
    head = ("variant vs baseline", "p50", "p95", "p99", "max")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    lines += [
        " | ".join([r.variant] + [_ratio(getattr(r, f"{q}_ms"), getattr(base, f"{q}_ms"))
                                  for q in QUANTILES])
        for r in rows if r is not base and not r.error
    ]
    return "\n".join(lines)


def median_throughputs(runs: list[Throughput]) -> list[Throughput]:
    """One row per endpoint: the run with the median deliveries/s."""
    rows = []
    for endpoint in TAIL_PATHS:
        group = [r for r in runs if r.endpoint == endpoint]
        ok = sorted((r for r in group if not r.error and r.per_s), key=lambda r: r.per_s or 0)
        if ok or group:
            rows.append(ok[len(ok) // 2] if ok else group[0])
    return rows


def tail_kept(rows: list[Throughput]) -> float | None:
    """The tailed endpoint's deliveries/s as a share of the untailed one's."""
    by = {r.endpoint: r.per_s for r in rows if not r.error}
    base, tail = by.get("no tail"), by.get("2% tail")
    return None if not base or tail is None else tail / base


def tail_pairs(runs: list[Throughput]) -> str:
    """Each round's deliveries/s without and with the tail, and their ratio."""
    pairs = []
    for base, tail in zip(runs[::2], runs[1::2], strict=False):
        if base.per_s and tail.per_s:
            pairs.append(f"{base.per_s:,.0f} / {tail.per_s:,.0f} ({tail.per_s / base.per_s:.2f}x)")
    return "Each round, deliv/s without / with the tail: " + "; ".join(pairs) if pairs else ""


def tail_table(rows: list[Throughput]) -> str:
    head = ("endpoint (backlog to one webhook)", "delivered", "seconds", "drained s", "deliv/s",
            "vs no tail", "deferred", "peak held", "daemon CPU s", "load 1m")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    base = next((r.per_s for r in rows if r.endpoint == "no tail" and not r.error), None)
    for r in rows:
        if r.error:
            lines.append(f"{r.endpoint} | error: {r.error[:80]} |" + " |" * (len(head) - 2))
            continue
        deferred = ", ".join(f"{n:,} {reason}" for reason, n in sorted(r.deferred.items()))
        lines.append(" | ".join([
            r.endpoint, f"{r.delivered:,}/{r.events:,}",
            "-" if r.seconds is None else f"{r.seconds:g}",
            "-" if r.drained_s is None else f"{r.drained_s:g}",
            f"{r.per_s:,.0f}" if r.per_s else "-",
            f"{r.per_s / base:.2f}x" if r.per_s and base else "-",
            deferred or "0", str(r.peak_held), f"{r.daemon_cpu_s:.2f}", f"{r.load_1m_before:.2f}",
        ]))
    kept = tail_kept(rows)
    if kept is not None:
        verdict = "kept" if kept >= TAIL_KEEPS else "did NOT keep"
        lines.append(f"\nThe endpoint with the tail {verdict} {kept:.0%} of its throughput "
                     f"(at least {TAIL_KEEPS:.0%} required).")
    return "\n".join(lines)


def markdown(rows: list[Run], settings: Settings, info: dict[str, Any], src: dict[str, Any],
             repeat: int, *, tails: list[Throughput] | None = None,
             tail_runs: list[Throughput] | None = None) -> str:
    concurrency = settings.concurrency or "default (256)"
    changes = " with uncommitted changes in dispatcher/" if src["dispatcher_dirty"] else ""
    setup = (
        f"`python -m bench.isolation`: {settings.healthy} healthy webhooks + 1 bad, "
        f"{settings.rate:g} events/s round-robin over {settings.healthy + 1} slots "
        f"(seed {settings.seed}), {settings.seconds:g} s measured after a {settings.warmup_s:g} s "
        f"warm-up, delivery.timeout_s = {settings.timeout_s:g}, delivery.concurrency = "
        f"{concurrency}; {repeat} run(s) per variant (median p99 shown).\n"
        f"Machine: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, {info['redis']}; "
        f"dispatcher {src['version']} at {src['commit'] or 'an unknown commit'}{changes}."
    )
    measure = (
        "Latency = arrival at the target - publish time, healthy webhooks only, events published "
        "after the warm-up; undelivered events count as infinitely late. The bad webhook gets "
        "events from the end of the warm-up on, so its onset (and the daemon's reaction to it) "
        "falls inside the measured window; the JSON has p50/p99 per second (`by_second`) and "
        "the daemon's log events per run. `bad requests`: attempts that reached the bad "
        "endpoint (none can for `refused`); `load 1m`: the load average before the run."
    )
    noise = (
        "Redis, the daemon, the target and the publisher share the machine's cores, so expect "
        "noise of +-20% or more between runs, most of all in p99 and max; compare ratios within "
        "one run and repeat (`--repeat 3`) before drawing conclusions."
    )
    title = "# Isolation: does one bad webhook endpoint slow the healthy ones?"
    parts = [title, setup, measure, table(rows), ratios(rows)]
    if tails:
        parts += [
            (f"Tail (throughput): a backlog of {settings.tail_events:,} events to one webhook "
            f"whose endpoint answers after {settings.lat_s * 1000:g} ms, without and with "
            f"{settings.tail_share:.0%} of its answers (seeded) taking "
            f"{settings.tail_s * 1000:g} ms; deliv/s: requests received, first to last "
            "(`drained s`: to the last answer); "
            "`deferred`: the daemon's `dispatcher_deferred_total`; `peak held`: the most "
            "requests the endpoint held at once."),
            tail_table(tails),
            tail_pairs(tail_runs or []),
        ]
    return "\n\n".join([*parts, noise]) + "\n"


def _overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set section.key=value`` (value as JSON when it parses, else a string)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        section, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise SystemExit(f"--set {item}: expected section.key=value")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(section, {})[key] = value
    return out


def _finite(value: Any) -> Any:
    """JSON has no infinity: an undelivered event's latency is written as "undelivered"."""
    if isinstance(value, float) and math.isinf(value):
        return "undelivered"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s over all slots")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured, after the warm-up")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds, not measured")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds to wait for late healthy deliveries after publishing")
    parser.add_argument("--healthy", type=int, default=20, help="healthy webhooks")
    parser.add_argument("--timeout", type=float, default=2.0, help="delivery.timeout_s")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="delivery.concurrency (default: the daemon's)")
    parser.add_argument("--slow-s", type=float, default=1.0,
                        help="delay of the slow-500 and slow-200 answers")
    parser.add_argument("--payload-bytes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all variants")
    parser.add_argument("--tail-events", type=int, default=20_000,
                        help="the backlog of each throughput run of the tail variant")
    parser.add_argument("--tail-s", type=float, default=0.4,
                        help="delay of the tail variant's slow answers (the others: 20 ms)")
    parser.add_argument("--tail-share", type=float, default=0.02,
                        help="share of the tail variant's answers that are slow")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="any other daemon setting, e.g. delivery.breaker_open_s=5")
    return parser.parse_args()


async def main_async(args: argparse.Namespace,
                     settings: Settings) -> tuple[list[Run], list[Throughput]]:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = Target(0.0, "--record", "--slow-s", str(settings.slow_s),
                    "--lat-s", str(settings.lat_s), "--tail-s", str(settings.tail_s),
                    "--tail-share", str(settings.tail_share), "--seed", str(settings.seed))
    runs: list[Run] = []
    tails: list[Throughput] = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(args.repeat):
                for variant in variants:
                    if variant == "tail":
                        tails += [await run_throughput(endpoint, settings, target, session)
                                  for endpoint in TAIL_PATHS]
                    else:
                        runs.append(await run_variant(variant, settings, target, session))
    finally:
        target.stop()
    return runs, tails


def main() -> None:
    args = parse_args()
    settings = Settings(
        rate=args.rate, seconds=args.seconds, warmup_s=args.warmup, drain_s=args.drain,
        healthy=args.healthy, timeout_s=args.timeout, concurrency=args.concurrency,
        slow_s=args.slow_s, payload_bytes=args.payload_bytes, seed=args.seed,
        overrides=_overrides(args.set), tail_events=args.tail_events, tail_s=args.tail_s,
        tail_share=args.tail_share,
    )
    started = time.monotonic()
    runs, tails = asyncio.run(main_async(args, settings))
    rows = median_runs(runs)
    tail_rows = median_throughputs(tails)
    info, src = machine(), source()
    text = markdown(rows, settings, info, src, args.repeat, tails=tail_rows, tail_runs=tails)
    if rows:
        print()
        print(table(rows))
        print()
        print(ratios(rows))
    if tail_rows:
        print()
        print(tail_table(tail_rows))
        print(tail_pairs(tails))
    report = {
        "machine": info, "dispatcher": src, "settings": asdict(settings),
        "repeat": args.repeat,
        "config": config_toml(settings, "redis://(fresh per run)", Path("(temporary)")),
        "seconds": round(time.monotonic() - started, 1),
        "rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in runs],
        "tail_rows": [asdict(r) for r in tail_rows], "tail_runs": [asdict(r) for r in tails],
        "tail_kept": tail_kept(tail_rows),
    }
    (RESULTS / "isolation-latest.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    (RESULTS / "isolation-latest.md").write_text(text)
    print(f"\nresults: {RESULTS / 'isolation-latest.md'}, {RESULTS / 'isolation-latest.json'}")


if __name__ == "__main__":
    main()
