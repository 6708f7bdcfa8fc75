"""Shards: delivery throughput with 1 shard on one Redis node against 3 shards on 3 nodes.

    python -m bench.shards                          # 30,000 jobs, 3 rounds (a few minutes)
    python -m bench.shards --jobs 5000 --runs 1     # a quick look (under a minute)
    python -m bench.shards --variants cluster-1,cluster-3 --processes 1

For the whole benchmark: a fresh 3-primary Redis Cluster on loopback (tests.helpers.ClusterServers,
with AOF switched off once it is up, so persistence is off as in the other benchmarks), a fresh
standalone redis-server (persistence off) and bench/target.py answering 200 at once. Variants:

- ``standalone-1``  redis.shards = 1 on the single redis-server: the reference
- ``cluster-1``     redis.shards = 1 on the cluster: every key on one primary
- ``cluster-3``     redis.shards = 3 on the cluster: each shard's keys on a primary of its own

One run of a variant, under a fresh ``redis.prefix``: record the shard count as ``dispatcher run``
does at start (``Store.adopt_layout``: a webhook's shard is chosen when it is created, and the
daemons start only once the backlog is queued); create ``--hooks`` webhooks, exactly as many in
each shard (placement hashes the new id, so a webhook landing in a full shard is deleted and
created again); publish ``--jobs`` events round-robin over them with ``Client.publish_many``, 256
a call; start ``--processes`` ``dispatcher run`` processes and wait until the target has every
job; stop them and flush the Redis.

Tenants: by default each webhook has a tenant of its own, so an event is one job, as in
bench/run.py and bench/isolation.py, and the webhooks get the jobs in turn. A publish
runs its script in every shard (each shard holds the routes of its own webhooks), so with 3 shards
each event costs 3 script calls of which 2 find nothing: the enqueue rate shows that fan-out at its
worst. ``--tenants one`` puts every webhook under one tenant instead: an event is then ``--hooks``
jobs, and the 3 calls share them (``--jobs`` is rounded down to a multiple of ``--hooks``).

Measured: deliveries/s from the first arrival at the target to the last; enqueue/s; per Redis
node, the CPU (INFO cpu, sys + user) and commands from the first arrival to the last, and the
keys it holds with the backlog queued; the daemons' CPU over the same time.
Variants alternate within each round, in an order rotated from round to round; each row of the
table is the run with the median deliveries/s. Results: a table on the terminal,
bench/results/shards-latest.{json,md}; the daemons' log of each variant's last run in
bench/results/worker-shards-<variant>.log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench.isolation import log_events, source
from bench.run import (
    PY,
    RESULTS,
    ROOT,
    Progress,
    Redis,
    Target,
    cpu_seconds,
    machine,
    stop_process,
)
from bench.systems.common import payload
from dispatcher import Client
from dispatcher.queue.keys import shard_of
from tests.helpers import ClusterServers, redis_cli

EVENT_TYPE = "bench.event"
BATCH = 256
POLL_S = 0.25  # the target's /stats carries every latency sample: polled sparingly ...
FIRST_POLL_S = 0.01  # ... but often until the first arrival, where CPU starts to count
STALL_S = 30.0  # no new arrival for this long: the run has stalled


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    label: str
    cluster: bool
    shards: int


VARIANTS = {
    v.key: v
    for v in (
        Variant("standalone-1", "1 shard, redis-server", cluster=False, shards=1),
        Variant("cluster-1", "1 shard, cluster", cluster=True, shards=1),
        Variant("cluster-3", "3 shards, cluster", cluster=True, shards=3),
    )
}


@dataclass(frozen=True, slots=True)
class Settings:
    jobs: int
    hooks: int
    tenants: str  # per-webhook | one
    processes: int
    concurrency: int
    payload_bytes: int

    @property
    def events(self) -> int:
        return self.jobs if self.tenants == "per-webhook" else self.jobs // self.hooks


@dataclass
class Run:
    variant: str
    round: int
    prefix: str
    jobs: int = 0
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    deliveries_per_s: float = 0.0
    enqueue_per_s: float = 0.0
    # CPU and commands are counted from the first poll that saw an arrival to the one that saw
    # the last (``measured`` deliveries), start-up not being delivery work; ``delivery_wall_s``
    # runs from that first poll to the last arrival
    delivery_wall_s: float = 0.0
    measured: int = 0
    worker_cpu_s: float = 0.0  # every daemon
    worker_cpu_s_per_1k: float = 0.0
    redis_cpu_s: list[float] = field(default_factory=list)  # per node
    redis_busy: list[float] = field(default_factory=list)  # per node, share of one core
    redis_cmds: list[int] = field(default_factory=list)  # per node
    redis_enqueue_cpu_s: list[float] = field(default_factory=list)  # per node
    keys_per_node: list[int] = field(default_factory=list)  # with the backlog queued
    jobs_per_shard: list[int] = field(default_factory=list)
    load_1m_before: float = 0.0
    log_events: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def redis_cpu_s_per_1k(self) -> float:
        return sum(self.redis_cpu_s) / max(self.measured, 1) * 1000

    @property
    def cmds_per_job(self) -> float:
        return sum(self.redis_cmds) / max(self.measured, 1)


# --- Redis nodes -------------------------------------------------------------------------------


class Node:
    """One redis-server (standalone, or a primary of the cluster), asked directly."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = redis.Redis(host="127.0.0.1", port=port)

    def info(self, section: str) -> dict[str, Any]:
        return self.conn.info(section)

    def snapshot(self) -> dict[str, float]:
        cpu = self.info("cpu")
        calls = sum(
            int(stats["calls"])
            for name, stats in self.info("commandstats").items()
            if not name.startswith("cmdstat_info")
        )
        return {
            "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "calls": float(calls),
            "keys": float(self.conn.dbsize()),
        }

    def flush(self) -> None:
        self.conn.flushall()

    def close(self) -> None:
        self.conn.close()


@dataclass
class Servers:
    """The standalone redis-server and the cluster, shared by every run."""

    standalone: Redis
    cluster: ClusterServers
    standalone_nodes: list[Node]
    cluster_nodes: list[Node]

    @classmethod
    def start(cls, directory: Path) -> Servers:
        cluster = ClusterServers(directory)
        standalone: Redis | None = None
        try:
            cluster.start()
            nodes = [Node(port) for port in sorted(cluster.ports)]
            for node in nodes:  # ClusterServers writes an AOF (fsync everysec): not here
                node.conn.config_set("appendonly", "no")
            standalone = Redis()
            return cls(standalone, cluster, [Node(standalone.port)], nodes)
        except BaseException:
            cluster.stop()
            if standalone is not None:
                standalone.stop()
            raise

    def url(self, variant: Variant) -> str:
        return self.cluster.url if variant.cluster else self.standalone.url

    def nodes(self, variant: Variant) -> list[Node]:
        return self.cluster_nodes if variant.cluster else self.standalone_nodes

    def slots(self) -> dict[int, str]:
        """Each cluster primary's slot ranges, by port."""
        found: dict[int, str] = {}
        for line in redis_cli(self.cluster_nodes[0].port, "cluster", "nodes").splitlines():
            parts = line.split()
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            found[port] = " ".join(parts[8:])
        return found

    def stop(self) -> None:
        for node in self.standalone_nodes + self.cluster_nodes:
            node.close()
        self.standalone.stop()
        self.cluster.stop()


def _deltas(before: list[dict[str, float]], after: list[dict[str, float]], key: str) -> list[float]:
    return [b[key] - a[key] for a, b in zip(before, after, strict=True)]


# --- one run -----------------------------------------------------------------------------------


async def create_hooks(
    client: Client, settings: Settings, shards: int, base: str
) -> tuple[list[str], dict[str, str]]:
    """``settings.hooks`` webhooks spread evenly over the shards, the i-th POSTing to
    ``/ok/<i>``; returns the tenants in that order, and each webhook's path by its id."""
    quota = Counter(dict.fromkeys(range(shards), settings.hooks // shards))
    for k in range(settings.hooks % shards):
        quota[k] += 1
    tenants, paths = [], {}
    for i in range(settings.hooks):
        tenant = f"shards-{i:03d}" if settings.tenants == "per-webhook" else "shards"
        for _ in range(100 * shards):
            hook = await client.create_webhook(tenant, f"{base}/ok/{i}")
            shard = shard_of(hook["id"])
            if quota[shard] > 0:
                quota[shard] -= 1
                paths[hook["id"]] = f"/ok/{i}"
                break
            await client.delete_webhook(hook["id"])  # that shard has its share already
        else:
            raise RuntimeError(f"webhook {i}: placement never reached a shard with room")
        tenants.append(tenant)
    return tenants, paths


async def enqueue(client: Client, tenants: list[str], settings: Settings) -> Counter[str]:
    """Publish the backlog; returns how many jobs each webhook got, by id."""
    per_hook: Counter[str] = Counter()
    events = settings.events
    for start in range(0, events, BATCH):
        answers = await client.publish_many(
            {
                "tenant_id": tenants[seq % len(tenants)],
                "event_type": EVENT_TYPE,
                "payload": payload(seq, settings.payload_bytes),
            }
            for seq in range(start, min(events, start + BATCH))
        )
        refused = [a for a in answers if not isinstance(a, dict)]
        if refused:
            raise RuntimeError(f"{len(refused)} events not accepted: {refused[0]}")
        per_hook.update(
            job["webhook_id"] for a in answers if isinstance(a, dict) for job in a["jobs"]
        )
    return per_hook


def start_daemons(
    *, url: str, prefix: str, variant: Variant, settings: Settings, state_dir: Path, log: Path
) -> list[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(
        {
            "DISPATCHER_STATE_DIR": str(state_dir),
            "DISPATCHER_REDIS_URL": url,
            "DISPATCHER_REDIS_PREFIX": prefix,
            "DISPATCHER_REDIS_SHARDS": str(variant.shards),
            "DISPATCHER_ADMIN_LISTEN": "",
            "DISPATCHER_DELIVERY_CONCURRENCY": str(settings.concurrency),
            "DISPATCHER_SECURITY_ALLOW_PRIVATE_TARGETS": "true",
            "DISPATCHER_LOG_LEVEL": "info",  # one line per delivery only at debug
            "DISPATCHER_LOG_FORMAT": "json",
        }
    )
    with log.open("ab") as out:
        return [
            subprocess.Popen(
                [PY, "-m", "dispatcher", "run"], cwd=ROOT, env=env, stdout=out, stderr=out
            )
            for _ in range(settings.processes)
        ]


@dataclass
class Arrivals:
    """The target's last stats, and what was measured at the first poll that saw an arrival."""

    stats: dict[str, Any]
    ok_at_first: int
    at_first: float  # unix time, as the target's arrival times
    cpu_at_first: float  # every daemon's
    nodes_at_first: list[dict[str, float]]


async def wait_delivered(
    *,
    target: Target,
    session: aiohttp.ClientSession,
    expected: dict[str, int],
    daemons: list[subprocess.Popen[bytes]],
    nodes: list[Node],
    progress: Progress,
) -> Arrivals:
    """Until every path has its jobs; raises when a daemon exits or arrivals stop."""
    total = sum(expected.values())
    first: tuple[int, float, float, list[dict[str, float]]] | None = None
    last_ok, last_change = -1, time.monotonic()
    while True:
        stats = await target.stats(session)
        progress.show(min(stats["ok"], total))
        if first is None and stats["ok"]:
            cpu = sum(cpu_seconds(d.pid) for d in daemons)
            first = (stats["ok"], time.time(), cpu, [node.snapshot() for node in nodes])
        paths: dict[str, int] = stats["paths"]
        if first is not None and all(paths.get(p, 0) >= n for p, n in expected.items()):
            return Arrivals(stats, *first)
        if stats["ok"] != last_ok:
            last_ok, last_change = stats["ok"], time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            progress.show(total)
            raise RuntimeError(
                f"stalled: {stats['ok']}/{total} arrived, none in the last {STALL_S:.0f} s"
            )
        if any(d.poll() is not None for d in daemons):
            raise RuntimeError("a daemon exited early (see its log)")
        await asyncio.sleep(POLL_S if first else FIRST_POLL_S)


async def run_variant(
    *,
    variant: Variant,
    round_no: int,
    settings: Settings,
    servers: Servers,
    target: Target,
    session: aiohttp.ClientSession,
) -> Run:
    run = Run(variant.key, round_no, f"shards-{round_no}-{secrets.token_hex(3)}")
    run.load_1m_before = round(os.getloadavg()[0], 2)
    url, nodes = servers.url(variant), servers.nodes(variant)
    log = RESULTS / f"worker-shards-{variant.key}.log"
    log.write_bytes(b"")
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        async with Client.from_url(url, prefix=run.prefix) as client:
            await client.store.adopt_layout(variant.shards)  # as `dispatcher run` does at start
            tenants, paths = await create_hooks(client, settings, variant.shards, target.base)
            await target.reset(session)
            before_enqueue = [node.snapshot() for node in nodes]
            started = time.perf_counter()
            per_hook = await enqueue(client, tenants, settings)
            run.enqueue_per_s = settings.events / (time.perf_counter() - started)
            run.jobs = per_hook.total()
            per_shard: Counter[int] = Counter()
            for hook, n in per_hook.items():
                per_shard[shard_of(hook)] += n
            run.jobs_per_shard = [per_shard[k] for k in range(variant.shards)]
            await _check_queued(client, run.jobs)
            before = [node.snapshot() for node in nodes]
            run.redis_enqueue_cpu_s = [round(d, 3) for d in _deltas(before_enqueue, before, "cpu")]
            run.keys_per_node = [int(b["keys"]) for b in before]
            with tempfile.TemporaryDirectory(prefix="dispatcher-shards-") as tmp:
                daemons = start_daemons(
                    url=url,
                    prefix=run.prefix,
                    variant=variant,
                    settings=settings,
                    state_dir=Path(tmp),
                    log=log,
                )
                expected = {paths[hook]: n for hook, n in per_hook.items()}
                progress = Progress(f"{variant.label} #{round_no + 1}", run.jobs)
                try:
                    got = await wait_delivered(
                        target=target,
                        session=session,
                        expected=expected,
                        daemons=daemons,
                        nodes=nodes,
                        progress=progress,
                    )
                except RuntimeError as exc:  # say where the jobs are
                    raise RuntimeError(f"{exc}; {await _queue_state(client)}") from exc
                after = [node.snapshot() for node in nodes]
                cpu = sum(cpu_seconds(d.pid) for d in daemons) - got.cpu_at_first
            _summarise(run, got=got, expected=expected, worker_cpu_s=cpu, after=after)
    except Exception as exc:  # a failed run is reported, the others still run
        run.error = str(exc)[:300]
        sys.stderr.write(f"\n  {variant.label}: {run.error}\n")
    finally:
        for daemon in daemons:
            stop_process(daemon)
        for node in nodes:
            node.flush()
    if log.exists():
        run.log_events = log_events(log)
    return run


async def _check_queued(client: Client, jobs: int) -> None:
    queued = (await client.status())["queued"]
    if queued != jobs:
        raise RuntimeError(f"{jobs} jobs published but the status counts {queued} queued")


async def _queue_state(client: Client) -> str:
    status = await client.status()
    counts = {name: status[name] for name in ("queued", "active", "scheduled", "dlq_size")}
    return "status: " + ", ".join(f"{name} {n}" for name, n in counts.items())


def _summarise(
    run: Run,
    *,
    got: Arrivals,
    expected: dict[str, int],
    worker_cpu_s: float,
    after: list[dict[str, float]],
) -> None:
    stats = got.stats
    paths: dict[str, int] = stats["paths"]
    run.delivered = stats["ok"]
    run.missing = sum(max(0, n - paths.get(path, 0)) for path, n in expected.items())
    run.duplicates = sum(max(0, paths.get(path, 0) - n) for path, n in expected.items())
    run.deliveries_per_s = round(run.jobs / max(stats["last_at"] - stats["first_at"], 1e-9), 1)
    run.worker_cpu_s = round(worker_cpu_s, 2)
    run.measured = stats["ok"] - got.ok_at_first
    run.delivery_wall_s = round(stats["last_at"] - got.at_first, 3)
    run.worker_cpu_s_per_1k = round(worker_cpu_s / max(run.measured, 1) * 1000, 4)
    cpu = _deltas(got.nodes_at_first, after, "cpu")
    run.redis_cpu_s = [round(c, 3) for c in cpu]
    run.redis_busy = [round(c / max(run.delivery_wall_s, 1e-9), 3) for c in cpu]
    run.redis_cmds = [int(c) for c in _deltas(got.nodes_at_first, after, "calls")]


# --- the report --------------------------------------------------------------------------------


def median_runs(runs: list[Run], variants: list[Variant]) -> list[Run]:
    """One row per variant: the run with the median deliveries/s."""
    rows = []
    for variant in variants:
        group = [r for r in runs if r.variant == variant.key]
        ok = sorted((r for r in group if not r.error), key=lambda r: r.deliveries_per_s)
        rows.append(ok[len(ok) // 2] if ok else group[0])
    return rows


def _each(values: list[float], fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in values)


def table(rows: list[Run], runs: list[Run]) -> str:
    head = (
        "variant", "deliv/s", "deliv/s each run", "enq/s", "Redis CPU % of a core, per node",
        "rCPU s/1k", "cmds/job", "wCPU s/1k", "keys per node", "jobs per shard", "lost", "dups",
    )  # fmt: skip
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        label = VARIANTS[r.variant].label
        if r.error:
            lines.append(f"{label} | error: {r.error[:80]} |" + " |" * (len(head) - 3))
            continue
        each = [x.deliveries_per_s for x in runs if x.variant == r.variant and not x.error]
        lines.append(" | ".join([
            label, f"{r.deliveries_per_s:,.0f}", _each(each, ",.0f"), f"{r.enqueue_per_s:,.0f}",
            _each([b * 100 for b in r.redis_busy], ".0f"), f"{r.redis_cpu_s_per_1k:.3f}",
            f"{r.cmds_per_job:.2f}", f"{r.worker_cpu_s_per_1k:.3f}",
            _each([float(k) for k in r.keys_per_node], ".0f"),
            _each([float(j) for j in r.jobs_per_shard], ".0f"), str(r.missing), str(r.duplicates),
        ]))  # fmt: skip
    return "\n".join(lines)


def ratios(rows: list[Run]) -> str:
    by = {r.variant: r for r in rows if not r.error}
    pairs = (
        ("cluster-3", "cluster-1", "3 shards / 1 shard on the cluster"),
        ("cluster-3", "standalone-1", "3 shards on the cluster / 1 shard on redis-server"),
        ("cluster-1", "standalone-1", "1 shard: cluster / redis-server"),
    )
    lines = []
    for ours, base, text in pairs:
        if ours in by and base in by and by[base].deliveries_per_s and by[base].enqueue_per_s:
            deliv = by[ours].deliveries_per_s / by[base].deliveries_per_s
            enq = by[ours].enqueue_per_s / by[base].enqueue_per_s
            lines.append(f"- {text}: deliveries/s {deliv:.2f}x, enqueue/s {enq:.2f}x")
    return "\n".join(lines)


def markdown(
    rows: list[Run], runs: list[Run], *, settings: Settings, info: dict[str, Any],
    src: dict[str, Any], slots: dict[int, str], seconds: float,
) -> str:  # fmt: skip
    changes = " with uncommitted changes in dispatcher/" if src["dispatcher_dirty"] else ""
    rounds = max((r.round for r in runs), default=0) + 1
    tenants = (
        "each of its own tenant (an event is one job)"
        if settings.tenants == "per-webhook"
        else "all of one tenant (an event is one job per webhook)"
    )
    setup = (
        f"`python -m bench.shards --jobs {settings.jobs} --runs {rounds}"
        f" --processes {settings.processes}`: {settings.jobs:,} jobs queued to {settings.hooks}"
        f" webhooks spread evenly over the shards, {tenants}, then {settings.processes}"
        f" `dispatcher run` process(es) at delivery.concurrency {settings.concurrency}; target"
        f" answers 200 at once; {rounds} round(s), variants alternating, median run shown"
        f" ({seconds:.0f} s in all).\n"
        f"Machine: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, {info['redis']};"
        f" dispatcher {src['version']} at {src['commit'] or 'an unknown commit'}{changes}.\n"
        "Cluster: 3 primaries, no replicas, slots by port: "
        + "; ".join(f"{port}: {ranges}" for port, ranges in sorted(slots.items()))
        + " (persistence off: AOF switched off after start, no RDB)."
    )
    measure = (
        "`deliv/s`: jobs / (last arrival - first arrival). `enq/s`: events published per second"
        " (Client.publish_many, 256 a call). `Redis CPU % of a core, per node`: INFO cpu (sys +"
        " user) from the first arrival to the last, over that time, for each node in"
        " port order (the cluster's three primaries, or the one redis-server); `rCPU s/1k` is"
        " their sum per 1,000 deliveries and `cmds/job` the commands run (INFO commandstats) per"
        " delivery. `wCPU s/1k`: every daemon's CPU over the same time. `keys per node`:"
        " with the backlog queued. `lost`/`dups`: jobs missing or repeated at the target."
    )
    noise = (
        "Everything (three cluster nodes and the idle redis-server, the target, the producer and"
        " the daemons) shares the machine's cores: when they are few, spreading Redis over nodes"
        " cannot add cores, and the figures show how the work divides, not what 3 machines would"
        " do. Expect +-20% between runs (see `deliv/s each run`); compare within one run."
    )
    title = "# Shards: 1 shard on one node against 3 shards on 3 nodes"
    parts = [title, setup, measure, table(rows, runs), ratios(rows), noise]
    return "\n\n".join(p for p in parts if p) + "\n"


# --- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=30_000, help="the backlog, per run")
    parser.add_argument("--hooks", type=int, default=30, help="webhooks, split evenly by shard")
    parser.add_argument("--tenants", choices=("per-webhook", "one"), default="per-webhook")
    parser.add_argument("--processes", type=int, default=2, help="`dispatcher run` processes")
    parser.add_argument("--concurrency", type=int, default=100, help="delivery.concurrency")
    parser.add_argument("--payload-bytes", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3, help="rounds over all variants (median)")
    return parser.parse_args()


async def main_async(
    variants: list[Variant], rounds: int, settings: Settings, servers: Servers
) -> list[Run]:
    target = Target(0.0)
    try:
        async with aiohttp.ClientSession() as session:
            return [
                await run_variant(
                    variant=variant,
                    round_no=round_no,
                    settings=settings,
                    servers=servers,
                    target=target,
                    session=session,
                )
                for round_no in range(rounds)
                for variant in _rotated(variants, round_no)
            ]
    finally:
        target.stop()


def _rotated(variants: list[Variant], by: int) -> list[Variant]:
    """Round ``by`` starts with another variant, so none always runs first (or last)."""
    shift = by % len(variants)
    return variants[shift:] + variants[:shift]


def main() -> None:
    args = parse_args()
    keys = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(keys) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.jobs < args.hooks:
        raise SystemExit("--jobs must be at least --hooks")
    variants = [VARIANTS[k] for k in keys]
    settings = Settings(
        jobs=args.jobs, hooks=args.hooks, tenants=args.tenants, processes=args.processes,
        concurrency=args.concurrency, payload_bytes=args.payload_bytes,
    )  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dispatcher-shards-redis-") as tmp:
        servers = Servers.start(Path(tmp))
        try:
            slots = servers.slots()
            runs = asyncio.run(main_async(variants, args.runs, settings, servers))
        finally:
            servers.stop()
    seconds = time.monotonic() - started
    rows = median_runs(runs, variants)
    info, src = machine(), source()
    print()
    print(table(rows, runs))
    print()
    print(ratios(rows))
    report = {
        "machine": info, "dispatcher": src, "settings": asdict(settings), "runs_per_variant":
        args.runs, "cluster_slots": {str(p): s for p, s in slots.items()},
        "seconds": round(seconds, 1),
        "rows": [_as_dict(r) for r in rows], "runs": [_as_dict(r) for r in runs],
    }  # fmt: skip
    (RESULTS / "shards-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(rows, runs, settings=settings, info=info, src=src, slots=slots, seconds=seconds)
    (RESULTS / "shards-latest.md").write_text(text)
    print(f"\nresults: {RESULTS / 'shards-latest.md'}, {RESULTS / 'shards-latest.json'}")


def _as_dict(run: Run) -> dict[str, Any]:
    return {
        **asdict(run),
        "redis_cpu_s_per_1k": round(run.redis_cpu_s_per_1k, 4),
        "cmds_per_job": round(run.cmds_per_job, 3),
    }


if __name__ == "__main__":
    main()
