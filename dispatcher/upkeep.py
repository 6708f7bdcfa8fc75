"""The worker's upkeep: what runs beside delivery to keep the queues and the worker in order.

- promote: move due jobs from the delay sets to their streams (every 0.1 s), and keep the
  Redis clock in step (every 10 s);
- sweep: find orphans, jobs whose stream entry was deleted (one page of the jobs hash each
  second); finished records past their retention and silent workers' heartbeats are the
  built-in tasks' (maintenance.py);
- control: re-read the paused queues, serve shards another process added, flush the
  per-minute counters (the per-webhook delivery stats too, queue/stats.py) and the
  per-webhook gauges, and beat this worker's heartbeat.

Each is a background loop (loops.py); every Redis call goes through ``dispatcher.queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import os
import socket
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import structlog

from dispatcher import loops
from dispatcher.queue import control, delays, streams
from dispatcher.queue import stats as hook_stats
from dispatcher.tally import Tally

if TYPE_CHECKING:
    from collections.abc import Callable

    from dispatcher.config import JobsConfig
    from dispatcher.liveness import Liveness
    from dispatcher.metrics import Metrics
    from dispatcher.queue.store import Store
    from dispatcher.traffic import Pool

log = structlog.get_logger()

PROMOTE_INTERVAL_S = 0.1
PROMOTE_SLACK_S = 0.005  # after a job falls due, for its outcome to be written
DUES_KEPT = 10_000  # due times of jobs put back, remembered for their promote pass
CLOCK_SYNC_INTERVAL_S = 10.0
CLOCK_JUMP_WARN_S = 5.0
ORPHAN_INTERVAL_S = 1.0
ORPHAN_PAGE = 500  # records of the jobs hash checked per second, per worker
CONTROL_TICK_S = 0.25  # the paused set is re-read every tick
STATS_FLUSH_TICKS = 4  # per-minute counters are flushed every second
HEARTBEAT_TICKS = int(control.HEARTBEAT_INTERVAL_S / CONTROL_TICK_S)


class Upkeep:
    """The promote, sweep and control loops of one worker, and the state they keep: the paused
    queues, the served shards, the per-minute counters."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        liveness: Liveness,
        stop: asyncio.Event,
        *,
        jobs: JobsConfig,
        pool: Pool,
        queues: tuple[str, ...],
        streams: tuple[str, ...],
        consumer: str,
        in_flight: Callable[[], int],
        on_shard: Callable[[Store], None],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.liveness = liveness
        self.stop = stop
        self.jobs_cfg = jobs
        self.pool = pool
        self.queues = queues
        self.streams = streams
        self.consumer = consumer
        self.in_flight = in_flight
        self.on_shard = on_shard  # a shard was added: start its readers
        # the shards this process serves (every shard that may hold work, keys.py); more are
        # added when another process raises redis.shards
        self.shards: list[Store] = [store]
        self.paused: frozenset[str] = frozenset()
        # minute -> counter -> value; flushed to stats:<minute> by the control loop, never
        # written to Redis from the delivery path
        self.stats: defaultdict[int, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        # the same per webhook, with latency and lag histograms, flushed to wstats:m:W:M
        self.tally = Tally()
        self.started_at_ms = int(time.time() * 1000)
        self.alive_at = time.monotonic()
        self._next_sync = 0.0
        # the next promote pass (monotonic): every PROMOTE_INTERVAL_S, or sooner when a job
        # this worker put back falls due before that (`due`)
        self._next_promote = 0.0
        # when the jobs this worker put back fall due (monotonic, a heap), until a pass starts
        # after each: a pass asks for the next one, not only the first (`_promote_pause`)
        self._dues: list[float] = []
        self._promote_sooner = asyncio.Event()
        self._cursors: defaultdict[int, str] = defaultdict(lambda: "0")  # orphans, by shard
        self._tick = 0

    def served_streams(self) -> list[tuple[Store, str]]:
        return [(shard, stream) for shard in self.shards for stream in self.streams]

    async def add_shards(self) -> None:
        """Serve the shards the layout names that this process does not serve yet (another
        process raised redis.shards): their groups first, then their readers."""
        served = await self.store.all_shards()
        for shard in served[len(self.shards) :]:
            for stream in self.streams:
                await streams.ensure_group(shard, stream)
            self.shards.append(shard)
            self.on_shard(shard)

    # --- promote -------------------------------------------------------------------------------

    async def promote_loop(self) -> None:
        outage = loops.Outage("promote", self.metrics, watch=(self.liveness, "promote"))
        self._next_sync = time.monotonic() + CLOCK_SYNC_INTERVAL_S
        await loops.run_every(self._promote, outage, self.stop, 0, pause=self._promote_pause)

    def due(self, due_ms: int) -> None:
        """A job this worker put back falls due at ``due_ms`` (server clock): promote it then,
        not up to a whole interval later (a 0.1 s retry would otherwise wait 0.15 s on
        average, and a run of retries the sum of those)."""
        at = time.monotonic() + (due_ms - self.store.clock.now_ms()) / 1000 + PROMOTE_SLACK_S
        if len(self._dues) < DUES_KEPT:  # beyond, the periodic pass promotes them
            heapq.heappush(self._dues, at)
        if at < self._next_promote:
            self._next_promote = at
            self._promote_sooner.set()

    async def _promote_pause(self) -> None:
        """Until the next promote pass is due, or ``stop``."""
        # a job put back while the pass ran (or due after the one that woke it) counts too
        self._next_promote = min(
            time.monotonic() + PROMOTE_INTERVAL_S, self._dues[0] if self._dues else math.inf
        )
        while not self.stop.is_set() and (left := self._next_promote - time.monotonic()) > 0:
            self._promote_sooner.clear()
            try:
                async with asyncio.timeout(left):
                    await self._promote_sooner.wait()
            except TimeoutError:
                return

    async def _promote(self) -> None:
        started = time.monotonic()
        while self._dues and self._dues[0] <= started:  # this pass promotes them
            heapq.heappop(self._dues)
        for shard, queue in self.served_streams():
            while True:
                promoted = await delays.promote_due(shard, queue)
                self.liveness.beat("promote")  # a huge due backlog is progress too
                self.metrics.inc("dispatcher_promoted_total", promoted.moved)
                if promoted.orphans:
                    log.error("job.record_missing", queue=queue, job_ids=promoted.orphans)
                if promoted.malformed:
                    self._report_malformed_records(queue, promoted.malformed)
                handled = promoted.moved + len(promoted.orphans) + len(promoted.malformed)
                if handled < delays.BATCH_LIMIT:
                    break
        if time.monotonic() >= self._next_sync:
            self._next_sync = time.monotonic() + CLOCK_SYNC_INTERVAL_S
            await self._check_clock()

    def _report_malformed_records(self, queue: str, job_ids: list[str]) -> None:
        self.metrics.inc("dispatcher_dead_lettered_total", len(job_ids), reason="malformed")
        log.error("job.dead_lettered", queue=queue, reason="malformed", job_ids=job_ids)

    async def _check_clock(self) -> None:
        moved_s = await self.store.clock.sync(self.store.redis)
        self.metrics.set("dispatcher_redis_clock_jump_seconds", moved_s)
        if abs(moved_s) > CLOCK_JUMP_WARN_S:
            log.warning("redis.clock_jumped", seconds=round(moved_s, 3))

    # --- sweep ---------------------------------------------------------------------------------

    async def sweep_loop(self) -> None:
        """Check one page of the jobs hash for orphans (each second): jobs whose stream entry
        was deleted. (Finished records past their retention are forgotten by the built-in
        task ``dispatcher.sweep_finished``, maintenance.py.)"""
        outage = loops.Outage("sweep", self.metrics)
        self._cursors.clear()
        await loops.run_every(self._sweep, outage, self.stop, ORPHAN_INTERVAL_S)

    async def _sweep(self) -> None:
        for shard in self.shards:
            number = shard.keys.shard
            cursor = self._cursors[number]
            found = await delays.find_orphans(shard, cursor=cursor, count=ORPHAN_PAGE)
            self._cursors[number] = found.cursor
            self._report_orphans(found)

    def _report_orphans(self, found: delays.Orphans) -> None:
        if found.requeued:
            self.metrics.inc("dispatcher_orphans_requeued_total", len(found.requeued))
            log.error("job.entry_missing", action="requeued", job_ids=found.requeued)
        if found.dead:
            self.metrics.inc(
                "dispatcher_dead_lettered_total", len(found.dead), reason="entry_missing"
            )
            log.error("job.entry_missing", action="dead_lettered", job_ids=found.dead)

    # --- control -------------------------------------------------------------------------------

    async def read_paused(self) -> None:
        """Learn the paused queues now (before the first read); Redis errors are ignored."""
        with contextlib.suppress(Exception):
            self.paused = frozenset(await control.paused_queues(self.store))

    async def control_loop(self) -> None:
        """Re-read the paused queues, flush the per-minute counters, beat the heart."""
        outage = loops.Outage("control", self.metrics, watch=(self.liveness, "control"))
        self._tick = 0
        await loops.run_every(
            self._control, outage, self.stop, CONTROL_TICK_S, pause_after_failure=True
        )

    async def _control(self) -> None:
        self.alive_at = time.monotonic()  # the systemd watchdog checks that this advances
        tick, self._tick = self._tick, self._tick + 1
        self.paused = frozenset(await control.paused_queues(self.store))
        if (await self.store.read_layout()).served > len(self.shards):
            await self.add_shards()
        if tick % STATS_FLUSH_TICKS == 0:
            await self.flush_stats()
            self.pool.forget_idle(time.monotonic())
            self.metrics.export_endpoints(self.pool)  # per-webhook gauges (R18), bounded
        if tick % HEARTBEAT_TICKS == 0:
            await control.heartbeat(self.store, self.consumer, self._beat())

    def _beat(self) -> dict[str, object]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at_ms": self.started_at_ms,
            "in_flight": self.in_flight(),
            "queues": list(self.queues),
        }

    async def flush_stats(self) -> None:
        if self.stats:
            counts, self.stats = self.stats, defaultdict(lambda: defaultdict(int))
            try:
                await control.flush_stats(self.store, counts)
            except BaseException:
                for minute, fields in counts.items():  # keep them for the next flush
                    for name, value in fields.items():
                        self.stats[minute][name] += value
                raise
        if self.tally.minutes:
            await self._flush_tally()

    async def _flush_tally(self) -> None:
        counts = self.tally.take()
        now_ms = self.store.clock.now_ms()
        try:
            await hook_stats.add(self.store, counts, now_ms)
        finally:
            if counts:  # what was not written waits for the next flush
                oldest = control.minute_of(now_ms) - hook_stats.MINUTE_TTL_S // 60
                self.tally.give_back(counts, oldest_minute=oldest)

    async def sign_off(self) -> None:
        """On a clean stop: write the last counters and remove this worker's heartbeat."""
        try:
            await self.flush_stats()
            await control.forget_worker(self.store, self.consumer)
        except Exception as exc:
            log.warning("worker.sign_off_failed", error=str(exc) or type(exc).__name__)
