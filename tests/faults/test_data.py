"""Scenario 9: malformed and poison stream entries, and entries deleted under the daemon."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from tests.faults.harness import Scenario
from tests.faults.table import keep
from tests.helpers import stream_entries
from tests.target import Hang

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


async def test_malformed_entries_and_entries_deleted_under_the_daemon(tmp_path: Path) -> None:
    """Garbage entries, an entry whose record is gone, pending entries deleted and queued
    entries trimmed away, all while events flow: the garbage is quarantined with a reason,
    every accepted job is delivered or in the DLQ by id (entry_missing), none is stuck."""
    async with Scenario("9a malformed + deleted entries", tmp_path) as run:
        redis, keys = run.client.store.redis, run.client.store.keys
        ready = keys.ready("default")
        async with run.publishing(per_second=150):
            await run.steady(2)
            async with run.fault():
                for n in range(5):
                    await redis.xadd(ready, {"garbage": f"entry {n}"})
                    await redis.xadd(ready, {"j": f"job_{'0' * 20}.{n}", "w": "wh_gone"})
                await run.client.pause("default")  # let a backlog of unclaimed entries form
                await asyncio.sleep(1.5)
                backlog = await stream_entries(redis, ready)
                deleted = [sid for sid, _ in backlog[: len(backlog) // 2]]
                await redis.xdel(ready, *deleted)
                await run.client.resume("default")
                await run.steady(1)
            await run.steady(2)
        row = await run.settle(timeout_s=90)
        keep(row)
        quarantined = [
            f for _, f in await stream_entries(redis, keys.dlq) if f.get(b"r") == b"malformed"
        ]
        assert len(quarantined) >= 10, "every garbage entry ends in the DLQ as malformed"
        assert row.dlq.get("entry_missing", 0) > 0


async def test_a_job_its_workers_keep_dying_on_becomes_poison(tmp_path: Path) -> None:
    """A delivery that a worker dies during three times is dead-lettered as poison, while
    the other webhooks' events flow on."""
    async with Scenario("9b poison job", tmp_path, daemons=1) as run:
        poison = await run.endpoint("/poison", Hang())
        async with run.publishing(per_second=100):
            await run.steady(1)
            async with run.fault():
                [poisoned] = await run.publish(poison)
                for kill in range(3):
                    await run.target.wait_for(kill + 1, "/poison", timeout_s=30)
                    run.daemons[-1].kill()
                    run.start_daemon()
            await run.steady(2)
        row = await run.settle(timeout_s=60)
        keep(row)
        job = await run.client.get_job(poisoned)
        assert job is not None
        assert (job["state"], job["dead_reason"], job["stalls"]) == ("dead", "poison", 3)
        # A healthy job in the hands of a killed worker each time may be poison too.
        assert set(row.dlq) == {"poison"}
