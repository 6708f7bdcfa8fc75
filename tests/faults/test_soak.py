"""Scenario 13: a seeded random-fault soak, minutes long (``make soak``, not in CI).

Faults drawn from the others, one every 8-15 s: SIGKILL a worker, freeze one past the stall
timeout, stop and restart Redis on its append-only file, pause Redis's clients, and turn one
endpoint bad and good again. At the end the accounting must balance as in every scenario,
and the memory of the daemon that lived through it all, and Redis's, must be flat.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.faults.harness import Scenario
from tests.faults.table import keep
from tests.target import Behaviour, Hang, Reply

pytestmark = pytest.mark.soak

SOAK_S = float(os.environ.get("FAULTS_SOAK_S", "300"))
SEED = int(os.environ.get("FAULTS_SOAK_SEED", "13"))
FLAT_RSS = 1.3  # the surviving daemon may grow this much (warm caches), no more
FLAT_REDIS_BYTES = 8 * 1024 * 1024


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _redis_bytes_besides_records(run: Scenario) -> int:
    """Redis's used memory less the job records, which are kept on purpose for
    jobs.retention_s (a day by default) and are what the accounting reads."""
    redis, keys = run.client.store.redis, run.client.store.keys
    used = int((await redis.info("memory"))["used_memory"])
    for key in (keys.jobs, keys.done):
        used -= int(await redis.memory_usage(key, samples=0) or 0)
    return used


async def _kill_worker(run: Scenario, _rng: random.Random) -> str:
    run.daemons[-1].kill()
    run.start_daemon()
    return "SIGKILL worker"


async def _freeze_worker(run: Scenario, _rng: random.Random) -> str:
    victim = run.daemons[-1]
    victim.signal(signal.SIGSTOP)
    await asyncio.sleep(4.0)  # past delivery.stall_timeout_s = 3
    victim.signal(signal.SIGCONT)
    return "SIGSTOP worker 4 s"


async def _restart_redis(run: Scenario, rng: random.Random) -> str:
    run.redis.stop(signal.SIGTERM)
    await asyncio.sleep(rng.uniform(0.5, 2.0))
    run.redis.start()
    return "Redis restarted on its AOF"


async def _pause_redis(run: Scenario, rng: random.Random) -> str:
    await run.client.store.redis.client_pause(int(rng.uniform(500, 2500)))
    return "CLIENT PAUSE"


async def _flip_endpoint(run: Scenario, rng: random.Random) -> str:
    choices: list[Behaviour] = [Reply(500), Hang(), Reply(200)]
    behaviour = rng.choice(choices)
    run.target.script("/flaky", behaviour)
    return f"/flaky -> {type(behaviour).__name__}"


FAULTS = (_kill_worker, _freeze_worker, _restart_redis, _pause_redis, _flip_endpoint)


@pytest.mark.timeout(SOAK_S + 600)
async def test_random_fault_soak(tmp_path: Path) -> None:
    settings = {"delivery_max_attempts": "1000"}
    async with Scenario("13 soak", tmp_path, settings=settings, seed=SEED) as run:
        rng = random.Random(SEED)
        flaky = await run.endpoint("/flaky")
        tenants = [t for t, path in run.tenants.items() if path in run.healthy] + [flaky]
        survivor = run.daemons[0]
        assert survivor.process is not None
        done: list[str] = []
        async with run.publishing(per_second=100, tenants=tenants):
            await run.steady(10)
            rss_start = _rss_bytes(survivor.process.pid)
            redis_start = await _redis_bytes_besides_records(run)
            deadline = time.monotonic() + SOAK_S
            async with run.fault():
                while time.monotonic() < deadline:
                    await asyncio.sleep(rng.uniform(8, 15))
                    done.append(await rng.choice(FAULTS)(run, rng))
                run.target.script("/flaky", Reply(200))
            await run.steady(10)
        row = await run.settle(timeout_s=180)
        rss_end = _rss_bytes(survivor.process.pid)
        redis_end = await _redis_bytes_besides_records(run)
        row.notes.append(
            f"faults: {len(done)}; daemon RSS {rss_start >> 20} -> {rss_end >> 20} MiB; "
            f"Redis used_memory besides job records {redis_start >> 20} -> {redis_end >> 20} MiB"
        )
        print(f"\n{row.notes[-1]}\n{done}")
        keep(row)
        assert rss_end <= rss_start * FLAT_RSS, row.notes[-1]
        assert redis_end <= redis_start + FLAT_REDIS_BYTES, row.notes[-1]
