"""Reclaim: the deliveries of a worker that died, taken over by one that lives.

Each pass of the reclaim loop keeps the claims this worker holds fresh in Redis (so no reclaim
takes them over), then takes over entries idle past the stall timeout, only as many as free
lanes can start now, from the worker's one claim budget. What a pass has no room for waits in
Redis, and the queue's read loop takes it over on its next turn, before new jobs
(``take_stalled``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from dispatcher import loops
from dispatcher.liveness import MAX_AGE_S
from dispatcher.queue import control, streams
from dispatcher.queue.keys import queue_of, streams_of

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    from dispatcher.config import DeliveryConfig
    from dispatcher.liveness import Liveness
    from dispatcher.metrics import Metrics
    from dispatcher.queue.store import Store
    from dispatcher.queue.streams import Claim
    from dispatcher.upkeep import Upkeep

log = structlog.get_logger()

RECLAIM_PAGE = 100


class Reclaimer:
    """The reclaim loop of one worker, with its cursors and the streams with stalled entries."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        liveness: Liveness,
        stop: asyncio.Event,
        upkeep: Upkeep,
        *,
        cfg: Callable[[], DeliveryConfig],
        consumer: str,
        held: dict[tuple[int, str], dict[str, Claim]],
        reserve: Callable[[int], int],
        unreserve: Callable[[int], None],
        start: Callable[[Store, list[Claim]], Awaitable[None]],
        queue_step: Callable[[Store, str, loops.Outage, Awaitable[object]], Awaitable[None]],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.liveness = liveness
        self.stop = stop
        self.upkeep = upkeep
        self.cfg = cfg  # read at each use: a reload changes it
        self.consumer = consumer
        self.held = held  # the worker's claims in its lanes, by (shard, stream) and sid
        self.reserve = reserve  # the worker's claim budget
        self.unreserve = unreserve
        self.start = start  # taken-over claims go through the gate
        self.queue_step = queue_step  # one step of a queue's loop (NOGROUP, back-off)
        self.cursors: dict[tuple[int, str], str] = {}  # kept from pass to pass
        # streams with stalled entries a reclaim pass had no free lanes for; their read loop
        # takes them over on its next turn (`take_stalled`)
        self.stalled: set[tuple[int, str]] = set()

    async def run(self) -> None:
        interval_s = max(0.25, min(self.cfg().stall_timeout_s / 4, 30.0))
        outage = loops.Outage(
            "reclaim",
            self.metrics,
            watch=(self.liveness, "reclaim"),
            max_age_s=interval_s + MAX_AGE_S,  # it sleeps that long between passes
        )
        while not self.stop.is_set():
            await loops.sleep_until_stop(self.stop, interval_s)
            if self.stop.is_set():
                return
            for shard, stream in self.upkeep.served_streams():
                await self.queue_step(shard, stream, outage, self.reclaim(stream, shard))

    async def reclaim(self, queue: str, shard: Store | None = None) -> int:
        """Keep the claims this worker holds fresh, then take over deliveries idle past the
        stall timeout: only as many as free lanes can start now (from the worker's one claim
        budget), and none of a paused queue. The cursor is kept for the next pass; what is left
        waits in Redis, idle in its dead worker's name (so it is neither taken twice nor
        counted as a stall twice), and the queue's read loop takes it over on its next turn,
        before new jobs (`take_stalled`)."""
        store = shard or self.store
        held = list(self.held.get((store.keys.shard, queue), {}).values())
        # Read now, not at the control loop's last tick: reclaimed jobs go straight to lanes.
        paused = queue_of(queue) in await control.paused_queues(self.store)
        taken = 0
        while True:
            count = 0 if paused else self.reserve(RECLAIM_PAGE)
            try:
                page = await self._reclaim_page(store, queue, count, held)
            finally:
                self.unreserve(count)
            held = []
            taken += len(page.claims)
            if count == 0 or page.cursor == "0-0":
                return taken

    async def take_stalled(self, shard: Store, queue: str, budget: int) -> int:
        """On a read loop's turn, before new jobs: take over, within the read's ``budget``,
        the stalled entries of its queue that a reclaim pass found no free lanes for (a busy
        worker never has free lanes when its reclaim pass comes, so they would wait for the
        backlog to end). Returns how many were taken over."""
        keys = [(shard.keys.shard, stream) for stream in streams_of(queue)]
        if not self.stalled.intersection(keys):
            return 0
        if queue in await control.paused_queues(self.store):
            return 0
        taken = 0
        for key in keys:
            stream = key[1]
            while key in self.stalled and taken < budget:
                page = await self._reclaim_page(shard, stream, budget - taken)
                taken += len(page.claims)
                if page.cursor == "0-0":
                    break
        return taken

    async def _reclaim_page(
        self, store: Store, stream: str, count: int, held: list[Claim] | None = None
    ) -> streams.ReclaimPage:
        """One reclaim page of ``stream`` from its kept cursor: keep ``held`` fresh, take over
        up to ``count`` stalled entries and start them; note whether stalled ones are left."""
        key = (store.keys.shard, stream)
        page = await streams.reclaim_page(
            store,
            stream,
            self.consumer,
            min_idle_ms=int(self.cfg().stall_timeout_s * 1000),
            cursor=self.cursors.get(key, "0-0"),
            count=count,
            held=held or (),
        )
        self.cursors[key] = page.cursor
        if page.more:
            self.stalled.add(key)
        else:
            self.stalled.discard(key)
        self._report_reclaim(stream, page)
        if page.claims:
            await self.start(store, page.claims)
        return page

    def _report_reclaim(self, queue: str, page: streams.ReclaimPage) -> None:
        if page.claims:
            self.metrics.inc("dispatcher_reclaimed_total", len(page.claims))
            log.warning("job.reclaimed", queue=queue, job_ids=[c.job_id for c in page.claims])
        if page.poisoned:
            self.metrics.inc("dispatcher_dead_lettered_total", len(page.poisoned), reason="poison")
            log.error("job.dead_lettered", queue=queue, reason="poison", job_ids=page.poisoned)
        if page.malformed:
            self.metrics.inc("dispatcher_malformed_total", len(page.malformed))
            self.metrics.inc(
                "dispatcher_dead_lettered_total", len(page.malformed), reason="malformed"
            )
            log.error("job.quarantined", queue=queue, reason="malformed", sids=page.malformed)
        if page.missing:  # their jobs are found by id by the orphan sweep
            self.metrics.inc("dispatcher_entry_missing_total", len(page.missing))
            log.error("job.entry_deleted_while_pending", queue=queue, sids=page.missing)
