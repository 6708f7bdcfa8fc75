"""The task runner: the daemon's lanes for task jobs on the ``maintenance`` and ``analytics``
queues, beside (never inside) the delivery worker.

It uses the deliveries' queue layer as it is: claims through the consumer group
(``streams.claim_new``/``wait_new``), outcomes written by ``settle.lua`` fenced by the claim
(a success is ``delivered``, its arguments kept ``jobs.payload_retention_s`` for a retry as a
delivery's payload is; a failure is retried after ``retry.next_delay_s`` with the
deliveries' backoff, and dead-lettered with its error after its max attempts), entries idle
past ``delivery.stall_timeout_s`` taken over by ``reclaim.lua`` (a daemon that died running a
task), retries promoted by ``promote.lua``. Its ``tasks.concurrency`` lanes are its own, so
tasks never take a delivery slot, the webhook pool, a breaker or a rate limit.

Each tick it also enqueues the periodic runs that are due (``task_tick.lua``: exactly one per
period whatever the number of daemons) and re-reads the paused queues.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING

import orjson
import structlog

from dispatcher import loops, retry
from dispatcher.queue import codec, control, delays, records, streams
from dispatcher.queue import tasks as queue_tasks
from dispatcher.queue.streams import Claim, MalformedEntry, SettleKind, Settlement
from dispatcher.tasks import TASK_QUEUES, TaskContext

if TYPE_CHECKING:
    from collections.abc import Callable

    from dispatcher.client import Client
    from dispatcher.config import Config, DeliveryConfig
    from dispatcher.metrics import Metrics
    from dispatcher.model import Job
    from dispatcher.queue.store import Store
    from dispatcher.tasks import Task

log = structlog.get_logger()

TICK_S = 0.5  # periodic runs, promotion of task retries, paused task queues
READ_BLOCK_MS = 500
ERROR_LIMIT = 2000  # characters of an exception's text kept as the last error


class TaskRunner:
    """Runs task jobs in ``lanes`` lanes until ``stop``; see the module's docstring."""

    def __init__(
        self,
        store: Store,
        client: Client,
        config: Config,
        registry: dict[str, Task],
        *,
        metrics: Metrics,
        stop: asyncio.Event,
        consumer: str,
        delivery: Callable[[], DeliveryConfig] | None = None,
    ) -> None:
        self.store = store.home
        self.client = client
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.stop = stop
        self.consumer = consumer
        self.delivery = delivery or (lambda: config.delivery)  # read at each use (reload)
        self.lanes = config.tasks.concurrency
        self.paused: frozenset[str] = frozenset()
        self.running: dict[str, asyncio.Task[None]] = {}  # by sid
        self.held: dict[str, Claim] = {}  # by sid: claims kept fresh by each reclaim pass
        self._room = asyncio.Event()
        self._cursors: dict[str, str] = {}
        self._next_register = 0.0

    async def run(self) -> None:
        """Register the tasks, then claim and run task jobs until ``stop``; on stop, running
        tasks get ``delivery.timeout_s`` to finish (the others are reclaimed later)."""
        await loops.until_done(self._set_up, loops.Outage("tasks.setup", self.metrics), self.stop)
        async with asyncio.TaskGroup() as group:
            loops_ = [
                group.create_task(self._tick_loop()),
                group.create_task(self._reclaim_loop()),
                group.create_task(self._read_loop()),
            ]
            await self.stop.wait()
            for task in loops_:
                task.cancel()
            if self.running:
                await asyncio.wait(self.running.values(), timeout=self.delivery().timeout_s)
            for task in list(self.running.values()):
                task.cancel()

    async def _set_up(self) -> None:
        for queue in TASK_QUEUES:
            await streams.ensure_group(self.store, queue)
        await self.store.clock.sync(self.store.redis)
        # paused queues known before the first read: a daemon starting while one is paused
        # must not claim from it before its first tick
        self.paused = frozenset(await control.paused_queues(self.store)) & set(TASK_QUEUES)
        await self._register()
        log.info("tasks.registered", tasks=sorted(self.registry), lanes=self.lanes)

    async def _register(self) -> None:
        """Write this daemon's tasks to Redis (again: a periodic task that no daemon registers
        any more stops being scheduled, queue/tasks.py)."""
        specs = [(t.name, t.queue, t.every_s) for t in self.registry.values()]
        await queue_tasks.register(self.store, specs)
        self._next_register = time.monotonic() + queue_tasks.REGISTER_EVERY_S

    def _free(self) -> int:
        return self.lanes - len(self.running)

    # --- claiming ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        outage = loops.Outage("tasks.read", self.metrics)
        order = list(TASK_QUEUES)
        while not self.stop.is_set():
            if self._free() <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            order.reverse()  # neither queue leads every read
            served = tuple(q for q in order if q not in self.paused)
            if not served:
                await loops.sleep_until_stop(self.stop, TICK_S)
                continue
            await loops.attempt(partial(self._read_once, served), outage, self.stop)

    async def _read_once(self, served: tuple[str, ...]) -> None:
        try:
            claims, malformed = await streams.claim_new(
                self.store, served, self.consumer, budget=self._free()
            )
            if not claims and not malformed:
                watched = served[: self._free()]
                claims, malformed = await streams.wait_new(
                    self.store, watched, self.consumer, count=1, block_ms=READ_BLOCK_MS
                )
        except Exception as exc:
            if not streams.is_nogroup(exc):
                raise
            await self._set_up()
            return
        for queue, bad in malformed:
            await self._quarantine(queue, [bad])
        for claim in claims:
            self._start(claim)

    async def _quarantine(self, queue: str, bad: list[MalformedEntry]) -> None:
        moved = await streams.quarantine(self.store, queue, "malformed", bad)
        self.metrics.inc("dispatcher_dead_lettered_total", moved, reason="malformed")
        log.error("job.quarantined", queue=queue, reason="malformed", sids=[m.sid for m in bad])

    def _start(self, claim: Claim) -> None:
        self.held[claim.sid] = claim
        task = asyncio.create_task(self._run_logged(claim))
        self.running[claim.sid] = task

        def done(_: asyncio.Task[None]) -> None:
            self.running.pop(claim.sid, None)
            self.held.pop(claim.sid, None)
            self._room.set()

        task.add_done_callback(done)

    # --- one run -------------------------------------------------------------------------

    async def _run_logged(self, claim: Claim) -> None:
        try:
            await self._run_claim(claim)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The entry stays pending and is reclaimed after the stall timeout.
            log.exception("task.crashed", job_id=claim.job_id)

    async def _run_claim(self, claim: Claim) -> None:
        try:
            job = claim.inline or await records.get_job(self.store, claim.job_id)
        except Exception as exc:  # Redis: the entry stays pending and is reclaimed later
            log.warning("task.load_failed", job_id=claim.job_id, error=str(exc) or repr(exc))
            return
        if job is None:
            raw = orjson.dumps({"j": claim.job_id, "record": "unreadable"})
            await self._quarantine(claim.queue, [MalformedEntry(claim.sid, raw)])
            return
        started_ms = self.store.clock.now_ms()
        started = time.monotonic()
        error = await self._call(job)
        duration_ms = (time.monotonic() - started) * 1000
        self.held.pop(claim.sid, None)  # its attempt is over: no longer kept fresh
        await self._settle(claim, job, started_ms, duration_ms, error)

    async def _call(self, job: Job) -> str | None:
        """Run the job's task; None when it succeeded, else the error text."""
        task = self.registry.get(job.event_type)
        if task is None:
            return f"no task named {job.event_type!r} is registered in this daemon (tasks.modules)"
        timeout_s = task.timeout_s or self.delivery().timeout_s
        try:
            args = orjson.loads(job.payload or b"{}")
            if not isinstance(args, dict):
                return "the task's arguments are not a JSON object"
            ctx = TaskContext(
                job.id, task.name, job.attempt + 1, self.config, self.client, self.store
            )
            async with asyncio.timeout(timeout_s):
                await task.fn(ctx, **args)
        except TimeoutError:
            return f"timed out after {timeout_s:g} s"
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is None or current.cancelling():
                raise  # the runner stops it (shutdown): the entry is reclaimed later
            return f"CancelledError: {exc}"[:ERROR_LIMIT]  # the task's own
        except BaseException as exc:  # SystemExit too: the task failed, not the daemon
            return f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]
        return None

    def _outcome(self, job: Job, error: str | None) -> tuple[SettleKind, str, str, int]:
        """What a finished attempt means, as for a delivery (retry.py): delivered, retry after
        the backoff, or dead after the task's max attempts. Applied to ``job``; returns the
        settle kind, the run's status, the dead reason and the score."""
        cfg = self.delivery()
        task = self.registry.get(job.event_type)
        most = (task.max_attempts if task else None) or cfg.max_attempts
        now_ms = self.store.clock.now_ms()
        if error is None:
            job.delivered(now_ms)
            return SettleKind.DELIVERED, "succeeded", "", now_ms
        if job.attempt < most:
            delay_s = retry.next_delay_s(
                job.attempt, base_s=cfg.backoff_base_s, cap_s=cfg.backoff_cap_s
            )
            job.retry(now_ms + int(delay_s * 1000))
            return SettleKind.RETRY, "failed", "", now_ms + int(delay_s * 1000)
        job.dead("max_attempts", now_ms)
        return SettleKind.DEAD, "dead", "max_attempts", now_ms

    async def _settle(
        self, claim: Claim, job: Job, started_ms: int, duration_ms: float, error: str | None
    ) -> None:
        """The attempt's outcome written by settle.lua (fenced by the claim), then noted as
        the task's last run."""
        job.attempted(started_ms, None, duration_ms, error)
        kind, status, reason, score = self._outcome(job, error)
        late = orjson.dumps([*job.history[-1][:4], 1])
        keep = True
        if kind is SettleKind.DELIVERED:  # its args kept for a retry, as settler.py keeps a payload
            jobs = self.config.jobs
            kept_ms = int(min(jobs.payload_retention_s, jobs.retention_s) * 1000)
            reason = str(kept_ms) if kept_ms > 0 else ""
            keep = bool(reason)
        record = codec.encode(job, keep_payload=keep)
        settlement = Settlement(claim, kind, record, score, reason, late)
        log.info(
            "task.ran",
            job_id=job.id,
            task=job.event_type,
            attempt=job.attempt,
            status=status,
            duration_ms=round(duration_ms, 1),
            error=error,
        )
        self.metrics.inc("dispatcher_task_runs_total", status=status)

        async def write() -> list[str]:
            return await streams.settle(self.store, self.consumer, [settlement])

        outage = loops.Outage("tasks.settle", self.metrics)
        never = asyncio.Event()  # outcomes are written while the daemon lives
        while (stale := await loops.attempt(write, outage, never)) is loops.FAILED:
            pass
        if stale:
            log.warning("job.stale_result_rejected", queue=claim.queue, job_ids=stale)
            return
        try:
            at_ms = job.finished_at_ms or job.processed_at_ms or score
            await queue_tasks.record_run(self.store, job.event_type, at_ms, status)
        except Exception as exc:
            log.warning("task.record_failed", task=job.event_type, error=str(exc) or repr(exc))

    # --- beside the runs -----------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """Enqueue due periodic runs, promote due retries, re-read the paused queues."""
        outage = loops.Outage("tasks.tick", self.metrics)
        await loops.run_every(self._tick, outage, self.stop, TICK_S)

    async def _tick(self) -> None:
        if time.monotonic() >= self._next_register:
            await self._register()
        enqueued, skipped = await queue_tasks.tick(self.store)
        if enqueued:
            log.info("task.scheduled", runs=[{"task": n, "job_id": j} for n, j in enqueued])
        if skipped:
            log.warning("task.period_skipped", tasks=skipped, why="the last run is unfinished")
        for queue in TASK_QUEUES:
            await delays.promote_due(self.store, queue)
        self.paused = frozenset(await control.paused_queues(self.store)) & set(TASK_QUEUES)

    async def _reclaim_loop(self) -> None:
        outage = loops.Outage("tasks.reclaim", self.metrics)
        interval_s = max(0.25, min(self.delivery().stall_timeout_s / 4, 30.0))
        await loops.run_every(self._reclaim, outage, self.stop, interval_s)

    async def _reclaim(self) -> None:
        """Keep this daemon's running claims fresh, then take over task jobs idle past the
        stall timeout (a daemon died or froze running them), as many as lanes are free."""
        for queue in TASK_QUEUES:
            held = [c for c in self.held.values() if c.queue == queue]
            count = 0 if queue in self.paused else max(0, self._free())
            page = await streams.reclaim_page(
                self.store,
                queue,
                self.consumer,
                min_idle_ms=int(self.delivery().stall_timeout_s * 1000),
                cursor=self._cursors.get(queue, "0-0"),
                count=count,
                held=held,
            )
            self._cursors[queue] = page.cursor
            if page.claims:
                log.warning("job.reclaimed", queue=queue, job_ids=[c.job_id for c in page.claims])
                self.metrics.inc("dispatcher_reclaimed_total", len(page.claims))
            if page.poisoned:
                log.error("job.dead_lettered", queue=queue, reason="poison", job_ids=page.poisoned)
            for claim in page.claims:
                self._start(claim)
