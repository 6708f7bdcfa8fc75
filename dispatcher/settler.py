"""The settler: outcomes of the delivery path, written back to Redis in batches.

``outcomes.py`` decides what becomes of each job (delivered, retry later, wait, park, dead
letter) and hands the outcome here (``settle``), which applies it to the job and queues it. One task
(``run``) writes the queue in batches, one ``settle.lua`` call per batch and queue, and keeps
each batch until Redis takes it (R9, R10). ``unsettled`` counts the outcomes not yet written:
the worker claims nothing while it exceeds its lanes.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TYPE_CHECKING

import orjson
import structlog

from dispatcher import loops
from dispatcher.queue import codec, control, streams
from dispatcher.queue.streams import SettleKind, Settlement

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from dispatcher.gate import Work
    from dispatcher.liveness import Liveness
    from dispatcher.metrics import Metrics
    from dispatcher.model import JobState
    from dispatcher.queue.store import Store
    from dispatcher.upkeep import Upkeep

log = structlog.get_logger()
_PARKED = (SettleKind.PARKED, SettleKind.HELD)

SETTLE_BATCH = 512
SETTLE_DRAIN_S = 10.0  # at shutdown, how long outcomes may wait for Redis before we give up


class Settler:
    """The queue of outcomes not yet written, and the loop that writes them."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        liveness: Liveness,
        upkeep: Upkeep,
        *,
        consumer: str,
        recover_nogroup: Callable[[Store, str], Awaitable[None]],
        written: Callable[[], None],
        payload_retention_ms: int = 0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.liveness = liveness
        self.upkeep = upkeep
        self.consumer = consumer
        self.recover_nogroup = recover_nogroup  # the group is gone: recreate it
        self.written = written  # a batch was written: the worker may have room to claim again
        self.queue: asyncio.Queue[Settlement] = asyncio.Queue()
        self.unsettled = 0
        # A delivered job's payload is kept this long for a retry (settle.lua's 'D'), passed
        # in its reason slot; '' drops it at delivery.
        self._keep_payload = str(payload_retention_ms) if payload_retention_ms > 0 else ""

    def settle(
        self,
        work: Work,
        kind: SettleKind,
        state: JobState,
        score_ms: int,
        reason: str,
        *,
        frees: int = 0,
        attempted: bool = False,
    ) -> None:
        """Queue an outcome for the settler. ``attempted``: it records an attempt made under
        this claim, which a stale claim's settle keeps in the history as late; a deferral or a
        park made no attempt, and a stale one leaves the history alone. A delivered job's
        record goes with its payload when ``payload_retention_ms`` keeps it (settle.lua moves
        it to its own key); ``reason`` is then that time."""
        job = work.job
        job.state = state
        keep = True
        if kind is SettleKind.DELIVERED:
            job.delivered(score_ms)
            reason = self._keep_payload
            keep = bool(reason)
        if kind is SettleKind.DEAD:
            job.dead(reason, score_ms)
            self.metrics.inc("dispatcher_dead_lettered_total", reason=reason)
            self.upkeep.stats[control.minute_of(score_ms)]["dead"] += 1
        late = orjson.dumps([*job.history[-1][:4], 1]) if attempted and job.history else b""
        settlement = Settlement(
            work.claim,
            kind,
            codec.encode(job, keep_payload=keep),
            score_ms,
            reason,
            late,
            parked_for=job.webhook_id if kind in _PARKED else None,
            lease_of=job.webhook_id if work.leased else None,
            waiting_in=job.webhook_id if kind is SettleKind.WAITING else None,
            frees=frees,
        )
        self.unsettled += 1
        self.queue.put_nowait(settlement)

    async def run(self) -> None:
        outage = loops.Outage("settle", self.metrics, watch=(self.liveness, "settle"))
        while True:
            if self.queue.empty():
                outage.idle()
            batch = [await self.queue.get()]
            outage.wake()
            while len(batch) < SETTLE_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            by_queue: defaultdict[tuple[int, str], list[Settlement]] = defaultdict(list)
            for item in batch:
                by_queue[item.claim.shard, item.claim.queue].append(item)
            for (shard, queue), items in by_queue.items():
                await self._settle_until_written(self.store.shard(shard), queue, items, outage)
            for _ in batch:
                self.queue.task_done()
            self.unsettled -= len(batch)
            self.written()

    async def _settle_until_written(
        self, shard: Store, queue: str, items: list[Settlement], outage: loops.Outage
    ) -> None:
        """Outcomes are kept in memory and retried until Redis takes them (R9, R10)."""

        async def write() -> list[str]:
            try:
                return await streams.settle(shard, self.consumer, items)
            except Exception as exc:
                if not streams.is_nogroup(exc):
                    raise
                # The group is gone (Redis lost its data): no claim of ours is current.
                await self.recover_nogroup(shard, queue)
                return [item.claim.job_id for item in items]

        never = asyncio.Event()  # no stop: outcomes are written while the worker lives
        while (stale := await loops.attempt(write, outage, never)) is loops.FAILED:
            pass
        if stale:
            self.metrics.inc("dispatcher_stale_owner_rejected_total", len(stale))
            log.warning("job.stale_result_rejected", queue=queue, job_ids=stale)

    async def write_last_outcomes(self) -> None:
        """Wait for the settler to write what is left, but not forever (Redis may be down):
        unwritten outcomes leave their jobs pending, to be delivered again after a reclaim."""
        try:
            async with asyncio.timeout(SETTLE_DRAIN_S):
                await self.queue.join()
        except TimeoutError:
            pass
        else:
            return
        log.error("worker.outcomes_unwritten", jobs=self.unsettled)
