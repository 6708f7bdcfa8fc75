"""Scenarios 1 and 2: workers killed, stopped cleanly, or frozen while events flow."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import pytest

from tests.faults.harness import SCALE, Scenario
from tests.faults.table import keep

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


async def test_sigkill_workers_repeatedly(tmp_path: Path) -> None:
    """SIGKILL a worker again and again while events flow: nothing accepted is lost."""
    async with Scenario("1a SIGKILL worker x3", tmp_path) as run:
        async with run.publishing(per_second=150):
            await run.steady(2)
            async with run.fault():
                for _ in range(3):
                    victim = run.daemons[-1]
                    victim.kill()
                    await asyncio.sleep(0.5)
                    run.start_daemon()
                    await asyncio.sleep(1.0 * SCALE)
            await run.steady(2)
        keep(await run.settle())


async def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    """SIGTERM a worker mid-flow: it drains, exits 0, and the other carries on."""
    async with Scenario("1b SIGTERM worker", tmp_path) as run:
        async with run.publishing(per_second=150):
            await run.steady(2)
            async with run.fault():
                victim = run.daemons[0]
                victim.signal(signal.SIGTERM)
                assert await asyncio.to_thread(victim.wait, 30) == 0
                run.start_daemon()
                await run.steady(1)
            await run.steady(2)
        row = await run.settle()
        assert row.duplicated == 0, "a clean stop hands work back without sending it twice"
        keep(row)


async def test_sigstop_worker_past_the_stall_timeout(tmp_path: Path) -> None:
    """SIGSTOP a worker past the stall timeout, then SIGCONT: its jobs are taken over and its
    late results refused (logged), and nothing is lost."""
    async with Scenario("2 SIGSTOP past stall", tmp_path) as run:
        async with run.publishing(per_second=150):
            await run.steady(2)
            frozen = run.daemons[0]
            async with run.fault():
                frozen.signal(signal.SIGSTOP)
                await asyncio.sleep(4.5)  # delivery.stall_timeout_s is 3
                frozen.signal(signal.SIGCONT)
            await run.steady(2)
        row = await run.settle()
        keep(row)
        assert "job.reclaimed" in "".join(d.log for d in run.daemons[1:])
