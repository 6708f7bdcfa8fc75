"""The delivery loop: claim -> send -> settle (delivered | retry later | dead letter).

One ``Worker`` per process serves its queues with a bounded number of HTTP requests in
flight. Claims are read in batches sized to the free slots; outcomes are written back by one
settler task in batches (settler.py: one ``settle.lua`` call per batch and queue), so the hot
path costs a few Redis commands per delivery. Deliveries of dead workers are taken over by
reclaim.py, within the same claim budget. What an attempt or a deferral means is decided in
outcomes.py (policy in ``retry.py``); every Redis call goes through ``dispatcher.queue``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING

import structlog

from dispatcher import __version__, loops
from dispatcher.channel import Channels
from dispatcher.gate import Actions, Gate, Work
from dispatcher.health import HealthWatch
from dispatcher.liveness import Liveness
from dispatcher.outcomes import Outcomes
from dispatcher.queue import admission, streams
from dispatcher.queue.keys import PRIORITIES, streams_of
from dispatcher.reclaim import Reclaimer
from dispatcher.settler import Settler
from dispatcher.signing import sign
from dispatcher.traffic import Pool
from dispatcher.upkeep import CONTROL_TICK_S, Upkeep

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from dispatcher.config import DeliveryConfig, JobsConfig
    from dispatcher.metrics import Metrics
    from dispatcher.queue.store import Store
    from dispatcher.queue.streams import Claim, MalformedEntry, Settlement
    from dispatcher.sender import HttpSender, Outcome

log = structlog.get_logger()

USER_AGENT = f"dispatcher/{__version__}"
READ_BLOCK_MS = 500  # also bounds how long a read begun before a pause can still claim
SHORT_BLOCK_MS = 100  # a blocking read that watches only some of a queue's streams
LEASE_FRESH_S = 1.0  # a lease taken this recently is not renewed when its attempt starts
READ_BATCH = 256
#: How often each priority comes first when a queue's streams are read: high is served first
#: most of the time, and low still leads one read in sixteen, so it never starves.
PRIORITY_WEIGHTS = (12, 3, 1)


def consumer_name() -> str:
    """``host:pid:start``, unique per process start, as RELIABILITY R6 asks."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time() * 1000)}"


class _Rotation:
    """Smooth weighted round robin over a queue's streams: which one a read serves first."""

    def __init__(self, queue: str) -> None:
        self.streams = streams_of(queue)
        self.current = [0] * len(PRIORITIES)

    def order(self) -> tuple[str, ...]:
        total = sum(PRIORITY_WEIGHTS)
        for i, weight in enumerate(PRIORITY_WEIGHTS):
            self.current[i] += weight
        first = max(range(len(self.current)), key=self.current.__getitem__)
        self.current[first] -= total
        lead = self.streams[first]
        return (lead, *(s for s in self.streams if s != lead))


class Worker:
    def __init__(
        self,
        store: Store,
        sender: HttpSender,
        delivery: DeliveryConfig,
        jobs: JobsConfig,
        metrics: Metrics,
        *,
        queues: tuple[str, ...] = ("default",),
        consumer: str | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.channels = Channels()  # each webhook's own TLS context and OAuth2 settings
        self.cfg = delivery
        self.jobs_cfg = jobs
        self.metrics = metrics
        self.queues = queues
        self.streams = tuple(s for q in queues for s in streams_of(q))
        self.consumer = consumer or consumer_name()
        self.pool = Pool(delivery.concurrency, delivery.timeout_s)
        self._rotations: dict[tuple[int, str], _Rotation] = {}
        self._group: asyncio.TaskGroup | None = None
        self._readers: list[asyncio.Task[None]] = []
        self.stop = asyncio.Event()
        # Claimed work waits here for one of `concurrency` lanes: long-lived tasks, so the hot
        # path creates no task per delivery.
        self._inbox: asyncio.Queue[Work] = asyncio.Queue()
        self._busy = 0  # claimed and not yet attempted to the end: in the inbox or in a lane
        # The claims behind `_busy`, by (shard, stream) and sid: each reclaim pass keeps their
        # entries fresh in Redis, so no reclaim takes over a claim this worker holds.
        self._held: defaultdict[tuple[int, str], dict[str, Claim]] = defaultdict(dict)
        self._room = asyncio.Event()
        self._room.set()
        # One claim budget for the whole worker, shared by its read loops: a read reserves
        # what it may claim before it reads (free lanes less the other reads' reservations)
        # and gives back what it did not claim; loops waiting for room take turns (FIFO).
        self._reserved = 0
        self._turns: deque[object] = deque()
        # the essential loops' progress, for the watchdog and /readyz
        self.liveness = liveness or Liveness()
        # promote, sweep, control (paused queues, served shards, stats, heartbeats): upkeep.py
        self.upkeep = Upkeep(
            store,
            metrics,
            self.liveness,
            self.stop,
            jobs=jobs,
            pool=self.pool,
            queues=queues,
            streams=self.streams,
            consumer=self.consumer,
            in_flight=lambda: self._busy,
            on_shard=self._shard_added,
        )
        self.shards = self.upkeep.shards  # one list, extended when shards are added
        # outcomes reported to the breakers, and the breaker loop: health.py
        self.health = HealthWatch(store, self.shards, metrics, self.stop, lambda: self.cfg)
        # outcomes written back in batches: settler.py
        self.settler = Settler(
            store,
            metrics,
            self.liveness,
            self.upkeep,
            consumer=self.consumer,
            recover_nogroup=self._recover_nogroup,
            written=self._room.set,
            # a record outlives no payload: at most jobs.retention_s
            payload_retention_ms=int(min(jobs.payload_retention_s, jobs.retention_s) * 1000),
        )
        # what each attempt or deferral means, queued for the settler: outcomes.py
        self.outcomes = Outcomes(
            store,
            metrics,
            self.pool,
            self.health,
            self.upkeep,
            settler=self.settler,
            cfg=lambda: self.cfg,
        )
        # what becomes of each claimed job before its attempt: gate.py
        self.gate = Gate(
            self.pool,
            self.health,
            Actions(
                send=self._hand_off,
                park=self.outcomes.park,
                hold=self.outcomes.hold,
                wait=self.outcomes.wait,
                wait_for_room=self._wait_for_room,
                dead=self.outcomes.dead_without_attempt,
                quarantine=self._quarantine,
            ),
            cfg=lambda: self.cfg,
            busy=lambda: self._busy,
            consumer=self.consumer,
        )
        # deliveries of dead workers taken over: reclaim.py
        self.reclaimer = Reclaimer(
            store,
            metrics,
            self.liveness,
            self.stop,
            self.upkeep,
            cfg=lambda: self.cfg,
            consumer=self.consumer,
            held=self._held,
            reserve=self._reserve,
            unreserve=self._unreserve,
            start=self._start,
            queue_step=self._queue_step,
        )

    @property
    def _paused(self) -> frozenset[str]:
        return self.upkeep.paused

    @_paused.setter
    def _paused(self, queues: frozenset[str]) -> None:
        self.upkeep.paused = queues

    @property
    def alive_at(self) -> float:
        return self.upkeep.alive_at

    @property
    def _settle_queue(self) -> asyncio.Queue[Settlement]:
        return self.settler.queue

    @property
    def _unsettled(self) -> int:
        return self.settler.unsettled

    @_unsettled.setter
    def _unsettled(self, count: int) -> None:
        self.settler.unsettled = count

    @property
    def _stalled(self) -> set[tuple[int, str]]:
        return self.reclaimer.stalled

    async def reclaim(self, queue: str, shard: Store | None = None) -> int:
        """One reclaim pass over ``queue`` (reclaim.py); returns how many were taken over."""
        return await self.reclaimer.reclaim(queue, shard)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._busy

    async def run(self, *, drain_grace_s: float | None = None) -> None:
        """Serve until ``stop`` is set, then drain: in-flight attempts get ``drain_grace_s``."""
        grace_s = self.cfg.timeout_s + 1 if drain_grace_s is None else drain_grace_s
        await self._set_up()
        # Learn the paused queues before the first read: a worker that starts while its queue
        # is paused must not claim from it before the control loop's first tick.
        await self.upkeep.read_paused()
        async with asyncio.TaskGroup() as group:
            self._group = group
            settler = group.create_task(self.settler.run())
            background = [
                group.create_task(self.upkeep.promote_loop()),
                group.create_task(self.reclaimer.run()),
                group.create_task(self.upkeep.sweep_loop()),
                group.create_task(self.upkeep.control_loop()),
                group.create_task(self.health.run()),
            ]
            lanes = [group.create_task(self._lane()) for _ in range(self.cfg.concurrency)]
            for shard in self.shards:
                self._serve(shard)
            await self.stop.wait()
            log.info("worker.draining", in_flight=self.in_flight, grace_s=grace_s)
            await asyncio.gather(*self._readers)
            await self._drain(lanes, grace_s)
            await self.settler.write_last_outcomes()
            settler.cancel()
            for task in background:
                task.cancel()
        await self.upkeep.sign_off()
        log.info("worker.stopped", consumer=self.consumer)

    async def _drain(self, lanes: list[asyncio.Task[None]], grace_s: float) -> None:
        """Let claimed work finish within the grace, then stop the lanes."""
        try:
            async with asyncio.timeout(grace_s):
                await self._inbox.join()
        except TimeoutError:
            # Their jobs stay pending in Redis and are reclaimed after the stall timeout.
            log.warning("worker.drain_timed_out", abandoned=self._busy)
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)

    async def _set_up(self) -> None:
        """Before the first read: the consumer groups of every served shard, the clock."""

        async def step() -> None:
            for stream in self.streams:
                await streams.ensure_group(self.store, stream)
            await self.upkeep.add_shards()
            await self.store.clock.sync(self.store.redis)

        await loops.until_done(step, loops.Outage("setup", self.metrics), self.stop)

    def _shard_added(self, shard: Store) -> None:
        """Upkeep serves one more shard (another process raised redis.shards): read it too."""
        if self._group is not None:
            self._serve(shard)
            log.info("worker.shard_added", shard=shard.keys.shard)

    def _serve(self, shard: Store) -> None:
        """Start the readers of one shard's queues."""
        assert self._group is not None  # noqa: S101 - only called inside run()
        for queue in self.queues:
            self._rotations[shard.keys.shard, queue] = _Rotation(queue)
            self._readers.append(self._group.create_task(self._read_loop(shard, queue)))

    async def _recover_nogroup(self, shard: Store, queue: str) -> None:
        """Recreate the consumer groups of a queue (or one stream) that lost them."""
        self.metrics.inc("dispatcher_nogroup_recoveries_total")
        log.warning("queue.group_recreated", queue=queue, shard=shard.keys.shard)
        for stream in streams_of(queue) if queue in self.queues else (queue,):
            await streams.ensure_group(shard, stream)

    # --- claiming ----------------------------------------------------------------------------

    async def _read_loop(self, shard: Store, queue: str) -> None:
        watch = f"read:{queue}" + (f"@{shard.keys.shard}" if shard.keys.shard else "")
        outage = loops.Outage(f"read:{queue}", self.metrics, watch=(self.liveness, watch))
        while not self.stop.is_set():
            if queue in self._paused:
                outage.idle()
                await loops.sleep_until_stop(self.stop, CONTROL_TICK_S / 2)
                continue
            if self._turns or self._free() <= 0:
                # waits for lanes (each attempt ends by its deadline) or the settler (watched)
                outage.idle()
                if not await self._take_turn() or queue in self._paused:
                    continue
            budget = self._reserve(READ_BATCH)
            outage.wake()
            await self._queue_step(shard, queue, outage, self._read_once(shard, queue, budget))

    def _free(self) -> int:
        """Claims this worker may still make: its lanes less the jobs it holds (in the inbox
        or a lane) and the reads under way; none while the settler lags behind."""
        if self.settler.unsettled > self.cfg.concurrency:
            return 0
        return self.cfg.concurrency - self._busy - self._reserved

    def _reserve(self, most: int) -> int:
        """Reserve up to ``most`` claims of the worker's budget for a read about to begin."""
        taken = max(0, min(self._free(), most))
        self._reserved += taken
        return taken

    def _unreserve(self, count: int) -> None:
        """Give back claims reserved and not used (those claimed are in ``_busy`` now)."""
        if count > 0:
            self._reserved -= count
            self._room.set()

    async def _take_turn(self) -> bool:
        """Wait until the worker may claim again, in turn with its other read loops (first
        come, first served, so a loop whose reads come back empty cannot keep the lanes that
        free from a loop with work); False when stopping."""
        turn = object()
        self._turns.append(turn)
        try:
            while self._turns[0] is not turn or self._free() <= 0:
                if self.stop.is_set():
                    return False
                self._room.clear()
                await self._wait_room()
            return not self.stop.is_set()
        finally:
            self._turns.remove(turn)
            self._room.set()  # the next in line looks again

    async def _read_once(self, shard: Store, queue: str, budget: int) -> None:
        """Claim new jobs: without waiting, highest priority first (rotated so none starves);
        when all the queue's streams are empty, block until one has an entry.

        ``budget`` claims are reserved for this read (``_reserve``); it never claims more, and
        gives back what it did not claim. A blocking read holds its reservation while it
        blocks, so it keeps only one claim per stream it watches (XREADGROUP's COUNT is per
        stream) and watches only as many streams as it holds claims, highest priority first
        and then briefly, since the others are claimed by the next read without waiting.
        """
        try:
            if self.reclaimer.stalled and await self.reclaimer.take_stalled(shard, queue, budget):
                return  # stalled jobs first; new ones on the next turn
            rotation = self._rotations[shard.keys.shard, queue]
            claims, malformed = await streams.claim_new(
                shard, rotation.order(), self.consumer, budget=budget
            )
            if not claims and not malformed:
                watched = streams_of(queue)[:budget]
                self._unreserve(budget - len(watched))
                budget = len(watched)
                block_ms = READ_BLOCK_MS if len(watched) == len(PRIORITIES) else SHORT_BLOCK_MS
                async with asyncio.timeout(block_ms / 1000 + 2):
                    claims, malformed = await streams.wait_new(
                        shard, watched, self.consumer, count=1, block_ms=block_ms
                    )
            by_stream: defaultdict[str, list[MalformedEntry]] = defaultdict(list)
            for stream, bad in malformed:
                by_stream[stream].append(bad)
            for stream, bad_entries in by_stream.items():
                await self._quarantine(shard, stream, bad_entries)
            if claims:
                await self._start(shard, claims)
        finally:
            self._unreserve(budget)

    async def _queue_step(
        self, shard: Store, queue: str, outage: loops.Outage, step: Awaitable[object]
    ) -> None:
        """One step of a queue's loop: NOGROUP recreates the group, other errors back off."""

        async def run() -> None:
            try:
                await step
            except Exception as exc:
                if not streams.is_nogroup(exc):
                    raise
                await self._recover_nogroup(shard, queue)

        await loops.attempt(run, outage, self.stop)

    async def _wait_room(self) -> None:
        stop = asyncio.ensure_future(self.stop.wait())
        room = asyncio.ensure_future(self._room.wait())
        try:
            await asyncio.wait({stop, room}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            room.cancel()

    async def _quarantine(self, shard: Store, queue: str, malformed: list[MalformedEntry]) -> None:
        moved = await streams.quarantine(shard, queue, "malformed", malformed)
        self.metrics.inc("dispatcher_malformed_total", moved)
        self.metrics.inc("dispatcher_dead_lettered_total", moved, reason="malformed")
        log.error(
            "job.quarantined", queue=queue, reason="malformed", sids=[m.sid for m in malformed]
        )

    async def _start(self, shard: Store, claims: list[Claim]) -> None:
        """Claimed jobs go through the gate (gate.py): each is sent, waits, or is dead."""
        await self.gate.start(shard, claims)

    def _hand_off(self, work: Work) -> None:
        """Give a claimed job to the lanes; its claim is held (kept fresh) until its lane ends."""
        claim = work.claim
        self._held[claim.shard, claim.queue][claim.sid] = claim
        self._busy += 1
        self._inbox.put_nowait(work)

    async def _lane(self) -> None:
        while True:
            work = await self._inbox.get()
            try:
                await self._deliver(work)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The job stays pending and is reclaimed after the stall timeout.
                log.exception("delivery.crashed", job_id=work.job.id)
            finally:
                self.pool.endpoint(work.webhook.id).started.pop(work.job.id, None)
                self.health.probes.discard(work.job.id)
                self._release(work.claim)
                self._busy -= 1
                self._room.set()
                self._inbox.task_done()

    def _release(self, claim: Claim) -> None:
        """The lane is done with ``claim``: its entry is no longer kept fresh (an outcome is
        written soon; after a crash, the entry goes idle and is reclaimed)."""
        held = self._held.get((claim.shard, claim.queue))
        if held is not None and held.get(claim.sid) is claim:
            del held[claim.sid]

    # --- one delivery ----------------------------------------------------------------------

    async def _deliver(self, work: Work) -> None:
        if work.leased and not await self._lease_holds(work):
            return
        stale = time.monotonic() - work.claim.at > self.cfg.stall_timeout_s / 2
        if stale and not await self._claim_holds(work):
            return
        job, hook = work.job, work.webhook
        self.pool.endpoint(work.webhook.id).sending(work.job.id, time.monotonic())
        started_ms = self.store.clock.now_ms()
        timestamp_s = started_ms // 1000
        headers = {
            **hook.headers,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": job.id,
            "webhook-timestamp": str(timestamp_s),
            "webhook-signature": sign(job.id, timestamp_s, job.payload, hook.secrets(started_ms)),
        }
        channel = self.channels.of(hook)
        outcome = await self.sender.attempt(hook.url, job.payload, headers, channel=channel)
        self._record(work, outcome, started_ms)

    async def _lease_holds(self, work: Work) -> bool:
        """A job admitted under max_in_flight starts its attempt: its lease runs from now if
        it waited for a lane a while, so it lasts the attempt. If the lease ran out meanwhile
        and the cap is full again (or Redis cannot say), the job waits without an attempt."""
        if time.monotonic() - work.admitted_at < LEASE_FRESH_S:
            return True
        try:
            if await admission.start_lease(
                self.store.shard(work.claim.shard),
                work.webhook,
                work.job.id,
                holder=self.consumer,
                attempt_timeout_s=self.cfg.timeout_s,
                claim=work.claim,
            ):
                return True
        except Exception as exc:  # any failure: the job waits, as if refused
            log.warning("lease.renew_failed", job_id=work.job.id, error=str(exc) or repr(exc))
        self._wait_for_room(work, "max_in_flight", reserved_ms=work.job.reserved_ms)
        return False

    async def _claim_holds(self, work: Work) -> bool:
        """A claim got long ago (the process was frozen, say) may have been taken over: then
        the job is another worker's, and this one attempts nothing (never two attempts of a
        job, or of a FIFO lane, at once); if Redis cannot say, it attempts nothing either (the
        job is reclaimed after the stall timeout)."""
        claim = work.claim
        try:
            if await streams.keep_claim(self.store.shard(claim.shard), self.consumer, claim):
                return True
        except Exception as exc:
            log.warning("claim.check_failed", job_id=work.job.id, error=str(exc) or repr(exc))
            return False
        log.warning("job.claim_lost", job_id=work.job.id)
        return False

    def _record(self, work: Work, outcome: Outcome, started_ms: int) -> None:
        """What the attempt means, queued for the settler (outcomes.py)."""
        self.outcomes.record(work, outcome, started_ms)

    def _wait_for_room(self, work: Work, reason: str, reserved_ms: int | None = None) -> None:
        """The job waits, without an attempt, until its webhook has room (outcomes.py)."""
        self.outcomes.wait_for_room(work, reason, reserved_ms)
