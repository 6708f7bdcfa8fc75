"""The benchmark: dispatcher against BullMQ, arq and saq doing the same work, in one run.

    python -m bench.run            # make bench: the full set (several minutes)
    python -m bench.run --quick    # make bench-quick: under a minute

Each run gets a fresh redis-server (persistence off) and the same fast target (bench/target.py).
A system is a driver with ``enqueue``/``produce``/``work`` commands (bench/systems/common.py),
so a scenario is a few lines: what to enqueue, how many worker processes, what to measure.
Results: a table on the terminal, JSON and a PNG chart in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
PEERS_PY = str(ROOT / "bench" / ".venv-peers" / "bin" / "python")  # arq and saq pin an old redis
CLK_TCK = os.sysconf("SC_CLK_TCK")

DRIVERS: dict[str, list[str]] = {
    "dispatcher": [PY, "-m", "bench.systems.dispatcher_driver"],
    "dispatcher-aiohttp": [PY, "-m", "bench.systems.dispatcher_driver", "--http-client=aiohttp"],
    "bullmq": ["node", str(ROOT / "bench" / "node" / "bullmq.mjs")],
    "arq": [PEERS_PY, "-m", "bench.systems.arq_driver"],
    "saq": [PEERS_PY, "-m", "bench.systems.saq_driver"],
}


@dataclass(frozen=True)
class Scenario:
    """What one run does. ``kind``: backlog (enqueue all, then work) or steady (paced)."""

    name: str
    kind: str = "backlog"
    n: int = 20_000
    workers: int = 1
    path: str = "ok"  # ok | flaky (20% of attempts answer 500)
    endpoints: int = 1
    steady_s: float = 10.0
    systems: tuple[str, ...] = ("dispatcher", "bullmq", "arq", "saq")


@dataclass
class Result:
    system: str
    scenario: str
    n: int
    workers: int
    concurrency: int
    delivered: int = 0
    deliveries_per_s: float = 0.0
    enqueue_per_s: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    worker_cpu_s_per_1k: float = 0.0
    redis_cpu_s_per_1k: float = 0.0
    redis_cmds_per_delivery: float = 0.0
    redis_bytes_per_job: float | None = None
    duplicates: int = 0
    failed_attempts: int = 0
    rate: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes ------------------------------------------------------------------------------


class Redis:
    """A throwaway redis-server with persistence off, and the INFO numbers we measure."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.info("server")
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def command(self, *args: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"*%d\r\n" % len(args) + b"".join(
                b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data.startswith(b"$"):
                    header, _, rest = data.partition(b"\r\n")
                    if len(rest) >= int(header[1:]) + 2:
                        return rest[: int(header[1:])]
                elif data.endswith(b"\r\n"):
                    return data
        return data

    def info(self, section: str) -> dict[str, str]:
        text = self.command("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def snapshot(self) -> dict[str, float]:
        mem = self.info("memory")
        cpu = self.info("cpu")
        calls = 0
        for key, value in self.info("commandstats").items():
            if key.startswith("cmdstat_") and not key.startswith("cmdstat_info"):
                calls += int(value.split(",")[0].split("=")[1])
        return {
            "used_memory": float(mem["used_memory"]),
            "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "calls": float(calls),
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the target -----------------------------------------------------------------------------


class Target:
    def __init__(self, fail: float = 0.2, *options: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [PY, str(ROOT / "bench" / "target.py"), "--port", str(self.port), "--fail", str(fail),
             *options],
            stdout=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("target did not start")

    def urls(self, path: str, endpoints: int) -> list[str]:
        return [f"{self.base}/{path}/{i}" for i in range(endpoints)]

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.base}/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def reset(self, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{self.base}/reset") as resp:
            await resp.read()

    def stop(self) -> None:
        stop_process(self.proc)


# --- one run ------------------------------------------------------------------------------------


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.started = label, total, time.monotonic()

    def show(self, done: int) -> None:
        if not sys.stderr.isatty() and done < self.total:
            return
        width = 30
        filled = int(width * min(done, self.total) / max(self.total, 1))
        rate = done / max(time.monotonic() - self.started, 1e-9)
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if done >= self.total else ""
        sys.stderr.write(f"\r  {self.label:<28} [{bar}] {done:>8}/{self.total} {rate:8.0f}/s{end}")
        sys.stderr.flush()


async def _driver(system: str, *args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *DRIVERS[system], *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{system} {args[0]} failed: {err.decode()[-800:]}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def _start_workers(system: str, redis: Redis, count: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    log = (RESULTS / f"worker-{system}.log").open("ab")
    procs = [
        subprocess.Popen([*DRIVERS[system], "work", "--redis", redis.url, "--concurrency",
                          str(concurrency)], cwd=ROOT, stdout=log, stderr=log)
        for _ in range(count)
    ]
    log.close()
    return procs


async def _wait_delivered(
    target: Target, session: aiohttp.ClientSession, n: int, progress: Progress, timeout_s: float,
    workers: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    cpu_start: tuple[float, int] | None = None
    while True:
        stats = await target.stats(session)
        progress.show(stats["unique"])
        if cpu_start is None and stats["ok"]:
            # Worker CPU is counted from the first arrival: start-up (imports, node's JIT
            # warm-up, connecting) is not per-delivery cost.
            cpu_start = (sum(cpu_seconds(w.pid) for w in workers), stats["ok"])
        if stats["unique"] >= n:
            stats["cpu_start"] = cpu_start or (0.0, 0)
            return stats
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {stats['unique']}/{n} delivered within {timeout_s:.0f} s")
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a worker process exited early (see bench/results/worker-*.log)")
        await asyncio.sleep(0.1)


def _percentiles(samples: list[float]) -> tuple[float, float, float] | None:
    if len(samples) < 20:
        return None
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return qs[49], qs[94], qs[98]


async def run_one(
    system: str, scenario: Scenario, target: Target, session: aiohttp.ClientSession,
    concurrency: int, rate: float | None = None,
) -> Result:
    result = Result(system, scenario.name, scenario.n, scenario.workers, concurrency, rate=rate)
    redis = Redis()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        await target.reset(session)
        urls = ",".join(target.urls(scenario.path, scenario.endpoints))
        before = redis.snapshot()
        if scenario.kind == "steady":
            await _steady(system, scenario, redis, target, session, urls, concurrency, rate, result)
            workers = []  # _steady stops its own workers
        else:
            enq = await _driver(system, "enqueue", "--redis", redis.url, "--targets", urls,
                                "--n", str(scenario.n))
            queued = redis.snapshot()
            result.enqueue_per_s = scenario.n / enq["seconds"]
            result.redis_bytes_per_job = (queued["used_memory"] - before["used_memory"]) / scenario.n
            workers = _start_workers(system, redis, scenario.workers, concurrency)
            progress = Progress(f"{system} {scenario.name}", scenario.n)
            stats = await _wait_delivered(target, session, scenario.n, progress,
                                          max(120.0, scenario.n / 100), workers)
            # From the first arrival to the last: process start-up (imports, node) is not
            # delivery work, and counting it would penalise short runs.
            result.deliveries_per_s = scenario.n / max(stats["last_at"] - stats["first_at"], 1e-9)
            _finish(result, stats, workers, redis, before)
    except Exception as exc:  # a failed system is reported, the run goes on
        result.error = str(exc)[:300]
        sys.stderr.write(f"\n  {system} {scenario.name}: {result.error}\n")
    finally:
        for proc in workers:
            stop_process(proc)
        redis.stop()
    return result


def _finish(result: Result, stats: dict[str, Any], workers: list[subprocess.Popen[bytes]],
            redis: Redis, before: dict[str, float]) -> None:
    after = redis.snapshot()
    n = max(stats["unique"], 1)
    result.delivered = stats["unique"]
    result.duplicates = stats["duplicates"]
    result.failed_attempts = stats["failed"]
    cpu_at_first, ok_at_first = stats["cpu_start"]
    cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu_at_first
    result.worker_cpu_s_per_1k = cpu / max(stats["ok"] - ok_at_first, 1) * 1000
    result.redis_cpu_s_per_1k = (after["cpu"] - before["cpu"]) / n * 1000
    result.redis_cmds_per_delivery = (after["calls"] - before["calls"]) / n


async def _steady(
    system: str, scenario: Scenario, redis: Redis, target: Target, session: aiohttp.ClientSession,
    urls: str, concurrency: int, rate: float | None, result: Result,
) -> None:
    rate = rate or 1000.0
    n = int(rate * scenario.steady_s)
    result.n = n
    workers = _start_workers(system, redis, scenario.workers, concurrency)
    try:
        await asyncio.sleep(1.5)  # let the workers connect before the clock starts
        before = redis.snapshot()
        produce = asyncio.create_task(_driver(
            system, "produce", "--redis", redis.url, "--targets", urls, "--rate", f"{rate:.1f}",
            "--seconds", str(scenario.steady_s)))
        progress = Progress(f"{system} {scenario.name} @{rate:.0f}/s", n)
        stats = await _wait_delivered(target, session, n, progress, scenario.steady_s + 60, workers)
        enq = await produce
        result.enqueue_per_s = n / enq["seconds"]
        result.deliveries_per_s = n / max(stats["last_at"] - stats["first_at"], 1e-9)
        lat = _percentiles(stats["latencies_ms"])
        if lat:
            result.p50_ms, result.p95_ms, result.p99_ms = (round(v, 2) for v in lat)
        _finish(result, stats, workers, redis, before)
    finally:
        for proc in workers:
            stop_process(proc)


async def run_bare(
    client: str, target: Target, session: aiohttp.ClientSession, n: int, concurrency: int
) -> Result:
    """An HTTP ceiling: POSTs with no queue through aiohttp or dispatcher's own sender."""
    result = Result(f"{client}-loop", "backlog", n, 1, concurrency)
    await target.reset(session)
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "bench.systems.aiohttp_loop", "--client", client,
        "--targets", target.urls("ok", 1)[0], "--n", str(n), "--concurrency", str(concurrency),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    data = json.loads(out.decode().strip().splitlines()[-1])
    stats = await target.stats(session)
    result.delivered = stats["ok"]
    result.deliveries_per_s = n / data["seconds"]
    result.worker_cpu_s_per_1k = data["cpu_s"] / n * 1000
    return result


# --- the whole benchmark -----------------------------------------------------------------------


def scenarios(quick: bool, systems: tuple[str, ...]) -> list[Scenario]:
    if quick:
        return [
            Scenario("backlog", n=5000, systems=systems),
            Scenario("steady", kind="steady", steady_s=3.0, systems=systems),
        ]
    ours = tuple(s for s in systems if s == "dispatcher")
    return [
        Scenario("backlog", n=20_000, systems=systems),
        Scenario("2 processes", n=20_000, workers=2, systems=systems),
        Scenario("20% failing", n=20_000, path="flaky", systems=systems),
        Scenario("steady", kind="steady", steady_s=10.0, systems=systems),
        Scenario("depth 10k", n=10_000, systems=ours),
        Scenario("depth 100k", n=100_000, systems=ours),
        Scenario("depth 1M", n=1_000_000, systems=ours),
    ]


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                   check=False).stdout.strip()
    node = shutil.which("node")
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                  check=False).stdout.strip() if node else None
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "redis": redis_version, "node": node_version, "platform": platform.platform()}


async def main_async(args: argparse.Namespace) -> list[Result]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    systems = tuple(s for s in args.systems.split(",") if s)
    target = Target()
    results: list[Result] = []
    try:
        async with aiohttp.ClientSession() as session:
            n_bare = 5000 if args.quick else 20_000
            for client in ("aiohttp", "sender") if not args.scenarios else ():
                results.append(await run_bare(client, target, session, n_bare, args.concurrency))
            best: dict[str, float] = {}
            wanted = {w.strip() for w in args.scenarios.split(",") if w.strip()}
            for scenario in scenarios(args.quick, systems):
                if wanted and scenario.name not in wanted:
                    continue
                for system in scenario.systems:
                    for _ in range(1 if args.quick or scenario.kind == "steady" else args.repeat):
                        rate = best.get(system, 0) / 2 if scenario.kind == "steady" else None
                        result = await run_one(system, scenario, target, session,
                                               args.concurrency, rate or None)
                        results.append(result)
                        if scenario.name == "backlog" and not result.error:
                            best[system] = max(best.get(system, 0), result.deliveries_per_s)
    finally:
        target.stop()
    return results


def median_rows(results: list[Result]) -> list[Result]:
    """One row per (system, scenario): the run with the median deliveries per second."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.system, r.scenario), []).append(r)
    rows = []
    for group in groups.values():
        ok = sorted((r for r in group if not r.error), key=lambda r: r.deliveries_per_s)
        rows.append(ok[len(ok) // 2] if ok else group[0])
    return rows


def table(rows: list[Result]) -> str:
    head = ("system", "scenario", "deliv/s", "enq/s", "p50 ms", "p99 ms", "wCPU s/1k",
            "rCPU s/1k", "cmds/job", "bytes/job", "dups")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        if r.error:
            lines.append(f"{r.system} | {r.scenario} | error: {r.error[:60]} |" + " |" * 8)
            continue
        lines.append(" | ".join([
            r.system, r.scenario + (f" @{r.rate:.0f}/s" if r.rate else ""),
            f"{r.deliveries_per_s:,.0f}", f"{r.enqueue_per_s:,.0f}" if r.enqueue_per_s else "-",
            f"{r.p50_ms:.1f}" if r.p50_ms is not None else "-",
            f"{r.p99_ms:.1f}" if r.p99_ms is not None else "-",
            f"{r.worker_cpu_s_per_1k:.3f}" if r.worker_cpu_s_per_1k else "-",
            f"{r.redis_cpu_s_per_1k:.3f}" if r.redis_cpu_s_per_1k else "-",
            f"{r.redis_cmds_per_delivery:.2f}" if r.redis_cmds_per_delivery else "-",
            f"{r.redis_bytes_per_job:.0f}" if r.redis_bytes_per_job else "-",
            str(r.duplicates),
        ]))
    return "\n".join(lines)


def ratios(rows: list[Result]) -> str:
    """dispatcher / peer for deliveries per second, scenario by scenario."""
    by = {(r.system, r.scenario): r for r in rows if not r.error}
    lines = []
    for (system, scenario), ours in sorted(by.items()):
        if system != "dispatcher":
            continue
        parts = []
        for peer in ("bullmq", "arq", "saq"):
            theirs = by.get((peer, scenario))
            if theirs and theirs.deliveries_per_s:
                parts.append(f"{peer} {ours.deliveries_per_s / theirs.deliveries_per_s:.2f}x")
        for loop in ("aiohttp", "sender"):
            bare = by.get((f"{loop}-loop", "backlog"))
            if scenario == "backlog" and bare:
                share = ours.deliveries_per_s / bare.deliveries_per_s
                parts.append(f"bare {loop} loop {share:.0%}")
        if parts:
            lines.append(f"dispatcher / peer, {scenario}: " + ", ".join(parts))
    return "\n".join(lines)


def chart(rows: list[Result], path: Path) -> bool:
    try:
        import matplotlib as mpl  # noqa: PLC0415 - optional, from the bench extra

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    ok = [r for r in rows if not r.error and r.scenario in ("backlog", "2 processes", "20% failing")]
    scen = sorted({r.scenario for r in ok}, key=["backlog", "2 processes", "20% failing"].index)
    systems = [s for s in ("dispatcher", "bullmq", "arq", "saq") if any(r.system == s for r in ok)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        values = [next((r.deliveries_per_s for r in ok if r.system == system and r.scenario == s), 0)
                  for s in scen]
        ax1.bar([x + i * width for x in range(len(scen))], values, width, label=system)
    ax1.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(scen))], scen)
    ax1.set_ylabel("deliveries per second")
    ax1.set_title("Throughput (higher is better)")
    ax1.legend()
    base = [r for r in ok if r.scenario == "backlog"]
    ax2.bar([r.system for r in base], [r.worker_cpu_s_per_1k for r in base], label="worker")
    ax2.bar([r.system for r in base], [r.redis_cpu_s_per_1k for r in base],
            bottom=[r.worker_cpu_s_per_1k for r in base], label="redis")
    ax2.set_ylabel("CPU seconds per 1,000 deliveries")
    ax2.set_title("Cost (lower is better)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="under a minute")
    parser.add_argument("--systems", default="dispatcher,bullmq,arq,saq")
    parser.add_argument("--scenarios", default="", help="comma-separated names (default all)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="runs per throughput cell (median)")
    args = parser.parse_args()
    started = time.monotonic()
    results = asyncio.run(main_async(args))
    rows = median_rows(results)
    text = table(rows)
    summary = ratios(rows)
    print()
    print(text)
    print()
    print(summary)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {"machine": machine(), "quick": args.quick, "concurrency": args.concurrency,
              "seconds": round(time.monotonic() - started, 1),
              "rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in results]}
    name = "quick" if args.quick else "full"
    for path in (RESULTS / f"{name}-{stamp}.json", RESULTS / f"latest-{name}.json"):
        path.write_text(json.dumps(report, indent=2))
    (RESULTS / f"latest-{name}.md").write_text(text + "\n\n" + summary + "\n")
    png = RESULTS / f"latest-{name}.png"
    print(f"\nresults: {RESULTS / f'latest-{name}.json'}"
          + (f", chart: {png}" if chart(rows, png) else " (pip install matplotlib for a chart)"))


if __name__ == "__main__":
    main()
