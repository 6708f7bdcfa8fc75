"""The driver of background DLQ operations: a large replay or purge, one page at a time.

Each admin process runs one ``Runner``. The admin API does the first page of a replay or purge
inline and, when more remains, records an operation (``queue/operations.py``) and hands it
here. The runner also takes over, every ``POLL_S``, any operation whose driver gave no sign of
life for ``operations.STALE_MS`` (its process died or lost Redis): it goes on from the last
recorded position, and since a replayed job is no longer dead and a purged entry is gone, a
page done again changes nothing twice. With no admin process running, an operation waits in
Redis, ``running``, until one starts.

With regions, an operation's plan lists the shards of every region it covers (``dlq_ops``), and
its state stays in the home region of the process that started it; a region that does not
answer fails the page (``RegionUnavailable``), which is tried again like any Redis error.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import asdict
from typing import TYPE_CHECKING

import structlog

from dispatcher.errors import DispatcherError
from dispatcher.queue import dlq, dlq_ops, operations
from dispatcher.queue.dlq_ops import Position, Progress, PurgePlan, ReplayPlan

if TYPE_CHECKING:
    from dispatcher.queue.operations import Operation
    from dispatcher.queue.regions import Regions
    from dispatcher.queue.store import Store

log = structlog.get_logger()

#: How often a runner looks for operations whose driver stopped.
POLL_S = 2.0
#: How long a runner waits after a Redis error before it tries the operation again.
RETRY_S = 1.0


def plan_of(op: Operation) -> ReplayPlan | PurgePlan:
    return ReplayPlan(**op.plan) if op.kind == "replay" else PurgePlan(**op.plan)


async def step(
    store: Store,
    plan: ReplayPlan | PurgePlan,
    position: Position,
    budget: int = dlq.PAGE,
    *,
    regions: Regions | None = None,
) -> Progress:
    """One bounded page of a replay or purge."""
    if isinstance(plan, ReplayPlan):
        return await dlq_ops.replay_step(store, plan, position, budget, regions=regions)
    return await dlq_ops.purge_step(store, plan, position, budget, regions=regions)


async def left(
    store: Store,
    plan: ReplayPlan | PurgePlan,
    position: Position,
    *,
    regions: Regions | None = None,
) -> int:
    """DLQ entries still to read (counted by id, no record read)."""
    if isinstance(plan, ReplayPlan):
        return await dlq_ops.replay_left(store, plan, position, regions=regions)
    return await dlq_ops.purge_left(store, plan, position, regions=regions)


async def begin(
    store: Store, kind: str, plan: ReplayPlan | PurgePlan, first: Progress
) -> Operation:
    """Record an operation that goes on where ``first`` (the inline page) stopped."""
    assert first.position is not None  # noqa: S101 - callers start one only when more remains
    stored = asdict(plan)
    if stored["regions"] is None:  # stored as before regions, so an older release reads it
        del stored["regions"]
    return await operations.start(
        store,
        kind,
        stored,
        asdict(first.position),
        done=first.read,
        changed=first.changed,
        skipped=first.skipped,
    )


class Runner:
    """Drives the operations this process started and those it takes over, one at a time."""

    def __init__(
        self, store: Store, *, poll_s: float = POLL_S, regions: Regions | None = None
    ) -> None:
        self.store = store
        self.regions = regions
        self.poll_s = poll_s
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    def hand(self, op_id: str) -> None:
        """Drive this (just started) operation."""
        self._queue.put_nowait(op_id)

    async def run(self) -> None:
        """Until cancelled: drive what is handed over, and take over stale operations."""
        failing = False
        while True:
            handed = None
            with suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    handed = await self._queue.get()
            if handed is not None:
                await self._drive(handed)
                continue
            try:
                for op_id in await operations.take_stale(self.store):
                    log.warning("operation.taken_over", operation_id=op_id)
                    await self._drive(op_id)
            except DispatcherError as exc:
                if not failing:
                    log.warning("operation.poll_failed", error=str(exc))
                failing = True
            else:
                failing = False

    async def _drive(self, op_id: str) -> None:
        """Drive one operation to its end; on a Redis error, leave it to the next try. While
        it fails (a region that does not answer, say), operations handed after it take their
        turns: it goes behind them, so one region's outage stalls only what needs it."""
        while True:
            try:
                await self._run_to_end(op_id)
            except DispatcherError as exc:
                log.warning("operation.step_failed", operation_id=op_id, error=str(exc))
                await asyncio.sleep(RETRY_S)
                if not self._queue.empty():
                    self._queue.put_nowait(op_id)
                    return
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("operation.failed", operation_id=op_id)
                with suppress(DispatcherError):
                    await operations.finish(
                        self.store, op_id, operations.FAILED, f"internal error: {exc}"
                    )
            return

    async def _run_to_end(self, op_id: str) -> None:
        op = await operations.get(self.store, op_id)
        if op is None or op.state != operations.RUNNING:
            await operations.forget(self.store, op_id)
            return
        plan = plan_of(op)
        position = Position(**op.position) if op.position else None
        done = op.done
        if position is not None and op.total is None:
            op.total = done + await left(self.store, plan, position, regions=self.regions)
            await operations.set_total(self.store, op_id, op.total)
        while position is not None:
            page = await step(self.store, plan, position, regions=self.regions)
            position, done = page.position, done + page.read
            await operations.record(
                self.store,
                op_id,
                position=asdict(position) if position else None,
                done=done,
                changed=page.changed,
                skipped=page.skipped,
            )
        await operations.finish(self.store, op_id, operations.SUCCEEDED)
        log.info("operation.finished", operation_id=op_id, kind=op.kind, read=done)
