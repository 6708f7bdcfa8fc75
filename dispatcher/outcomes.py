"""What an attempt or a deferral means for its job, handed to the settler.

The worker's lanes report each attempt here (``record``: delivered, retry later or dead
letter, by ``retry.py``, with the webhook disabled on 410 Gone), and the gate reports each job
that gets no attempt now (``wait``, ``wait_for_room``, ``park``, ``dead_without_attempt``).
Each decision is counted, logged and queued for the settler (settler.py), which writes it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from dispatcher import proxy, retry
from dispatcher.gate import Work
from dispatcher.logs import debug_enabled
from dispatcher.metrics import Metrics
from dispatcher.model import JobState, Webhook
from dispatcher.queue import control
from dispatcher.queue.streams import SettleKind
from dispatcher.queue.webhooks import disable_webhook

if TYPE_CHECKING:
    from collections.abc import Callable

    from dispatcher.config import DeliveryConfig
    from dispatcher.health import HealthWatch
    from dispatcher.metrics import Series
    from dispatcher.model import Job
    from dispatcher.queue.breakers import Breaker
    from dispatcher.queue.store import Store
    from dispatcher.queue.streams import Claim
    from dispatcher.sender import Outcome
    from dispatcher.settler import Settler
    from dispatcher.traffic import Pool
    from dispatcher.upkeep import Upkeep

log = structlog.get_logger()


class Outcomes:
    """Turns an attempt's result, or a job's deferral, into the outcome the settler writes."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        pool: Pool,
        health: HealthWatch,
        upkeep: Upkeep,
        *,
        settler: Settler,
        cfg: Callable[[], DeliveryConfig],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.pool = pool
        self.health = health
        self.upkeep = upkeep
        self.settler = settler
        self.cfg = cfg  # read at each use: a reload changes it

    def record(self, work: Work, outcome: Outcome, started_ms: int) -> None:
        """Decide what the attempt means (retry.py) and queue the outcome for the settler."""
        cfg = self.cfg()
        job = work.job
        attempt = job.attempt + 1
        status = outcome.status
        verdict = retry.verdict(status, attempt, cfg.max_attempts)
        now_ms = self.store.clock.now_ms()
        if outcome.blame is None:
            self.pool.endpoint(job.webhook_id).end(
                job.id,
                outcome.duration_ms / 1000,
                answered=status is not None,
                ok=outcome.delivered,
            )
            self.health.note(job.webhook_id, outcome)
        else:  # the egress proxy failed: nothing learnt of the endpoint, its breaker untouched
            self.pool.endpoint(job.webhook_id).release(job.id)
            self.metrics.inc(proxy.FAILURES_METRIC)
        frees = self._frees(work)
        self.health.answered(job.id)
        job.attempted(started_ms, status, outcome.duration_ms, outcome.error)
        self.metrics.durations.observe(outcome.duration_ms / 1000)
        minute = control.minute_of(now_ms)
        counts = self.upkeep.stats[minute]
        counts["ms_sum"] += round(outcome.duration_ms)
        if verdict is retry.Verdict.DELIVERED:
            counts["delivered"] += 1
            lag_ms = now_ms - job.created_at_ms
            self.upkeep.tally.attempt(job.webhook_id, minute, outcome.duration_ms, lag_ms)
            self.metrics.add(_DELIVERED.get(status) or _delivered(status))
            if debug_enabled():
                log.debug("delivery.succeeded", **_fields(job, attempt, outcome))
            self.settler.settle(
                work,
                SettleKind.DELIVERED,
                JobState.DELIVERED,
                now_ms,
                "",
                frees=frees,
                attempted=True,
            )
            return
        counts["failed"] += 1
        self.upkeep.tally.attempt(job.webhook_id, minute, outcome.duration_ms, None)
        status_class = f"{status // 100}xx" if status else "none"
        fields = _fields(job, attempt, outcome)
        self.metrics.inc("dispatcher_deliveries_total", outcome="failed", status=status_class)
        if verdict is retry.Verdict.RETRY:
            delay_s = retry.next_delay_s(
                attempt,
                base_s=cfg.backoff_base_s,
                cap_s=cfg.backoff_cap_s,
                retry_after_s=outcome.retry_after_s,
                status=status,
                timed_out=outcome.timed_out,
            )
            due_ms = now_ms + int(delay_s * 1000)
            job.retry(due_ms)
            self.upkeep.due(due_ms)
            self.metrics.inc("dispatcher_retries_scheduled_total")
            log.info("delivery.failed", **fields, error=outcome.error, retry_in_s=round(delay_s, 3))
            self.settler.settle(
                work, SettleKind.RETRY, JobState.SCHEDULED, due_ms, "", frees=frees, attempted=True
            )
            return
        reason = "gone" if verdict is retry.Verdict.DISABLE else "max_attempts"
        log.warning("delivery.failed", **fields, error=outcome.error, dead_reason=reason)
        if verdict is retry.Verdict.DISABLE:
            self._disable(job.webhook_id, f"endpoint answered 410 Gone (job {job.id})")
        self.settler.settle(
            work, SettleKind.DEAD, JobState.DEAD, now_ms, reason, frees=frees, attempted=True
        )

    def wait(self, work: Work, due_ms: int, reason: str, reserved_ms: int | None = None) -> None:
        """Put the job back, due at ``due_ms``, without spending an attempt or holding a slot."""
        job = work.job
        job.defer(due_ms, reason, reserved_ms)
        self.upkeep.due(due_ms)
        self.metrics.inc("dispatcher_deferred_total", reason=reason)
        self.settler.settle(work, SettleKind.RETRY, JobState.SCHEDULED, due_ms, "")

    def wait_for_room(self, work: Work, reason: str, reserved_ms: int | None = None) -> None:
        """Put the job in its webhook's waiting set, without spending an attempt, until room
        frees: one of the webhook's attempts ends, or the tick sees room (waiting.py). A job
        refused a share of an endpoint this process is not sending to (its last lanes are
        kept for fast endpoints) has no attempt here to release it: it waits a short while."""
        endpoint = self.pool.endpoint(work.webhook.id)
        if reason == "endpoint_capacity" and not endpoint.started:
            delay_s = endpoint.defer(time.monotonic(), self.cfg().timeout_s)
            due_ms = self.store.clock.now_ms() + int(delay_s * 1000)
            self.wait(work, due_ms, reason, reserved_ms=reserved_ms)
            return
        job = work.job
        job.defer(None, reason, reserved_ms)  # a rate slot it holds stays its own (admit.lua)
        self.metrics.inc("dispatcher_deferred_total", reason=reason)
        self.settler.settle(work, SettleKind.WAITING, JobState.SCHEDULED, job.created_at_ms, "")

    def park(self, work: Work, breaker: Breaker) -> None:
        """Keep the job in Redis until the webhook's breaker closes (breaker_tick.lua)."""
        job = work.job
        job.park(breaker.retry_at_ms)  # a rate slot it holds stays its own (admit.lua)
        self.metrics.inc("dispatcher_deferred_total", reason="breaker")
        self.settler.settle(
            work, SettleKind.PARKED, JobState.SCHEDULED, self.store.clock.now_ms(), ""
        )

    def hold(self, work: Work) -> None:
        """Keep the job in Redis, without an attempt, while its webhook is paused; resuming
        puts it back in its queue in the order its webhook's jobs were accepted (pauses.py)."""
        job = work.job
        job.hold()
        self.metrics.inc("dispatcher_deferred_total", reason="paused")
        self.settler.settle(work, SettleKind.HELD, JobState.SCHEDULED, _accepted(job), "")

    def dead_without_attempt(self, claim: Claim, job: Job, hook: Webhook | None) -> None:
        """Dead-letter a job whose webhook was deleted or disabled, without an attempt."""
        reason = "webhook_deleted" if hook is None else "webhook_disabled"
        job.last_error = (
            f"webhook {job.webhook_id} was deleted"
            if hook is None
            else f"webhook {job.webhook_id} is disabled: {hook.disabled_reason or 'by an operator'}"
        )
        log.warning("job.dead_lettered", job_id=job.id, webhook_id=job.webhook_id, reason=reason)
        self.settler.settle(
            Work(claim, job, hook or _GONE),
            SettleKind.DEAD,
            JobState.DEAD,
            self.store.clock.now_ms(),
            reason,
        )

    def _frees(self, work: Work) -> int:
        """How many of the webhook's waiting jobs go back to their queue as this attempt
        ends: one for the place it frees, and one more while this process has room for the
        webhook beyond that (so its share can grow back) that max_in_flight leaves too."""
        endpoint = self.pool.endpoint(work.webhook.id)
        cap = work.webhook.max_in_flight
        more = endpoint.room(time.monotonic()) > 0 and (
            cap is None or len(endpoint.started) + 1 < cap
        )
        return 2 if more else 1

    def _disable(self, webhook_id: str, reason: str) -> None:
        log.warning("webhook.disabled", webhook_id=webhook_id, reason=reason)
        task = asyncio.create_task(disable_webhook(self.store, webhook_id, reason))
        task.add_done_callback(_log_failure("webhook.disable_failed"))


_GONE = Webhook(id="", tenant_id="", url="", event_types=[], secret="")

#: the counter series of a delivery, by status (made once per status: counted per delivery)
_DELIVERED: dict[int | None, Series] = {}
_STATUSES_KEPT = 1000


def _delivered(status: int | None) -> Series:
    status_class = f"{status // 100}xx" if status else "none"
    series = Metrics.series("dispatcher_deliveries_total", outcome="delivered", status=status_class)
    if len(_DELIVERED) < _STATUSES_KEPT:  # statuses are three digits
        _DELIVERED[status] = series
    return series


def _fields(job: Job, attempt: int, outcome: Outcome) -> dict[str, Any]:
    """What a delivery's log line says of it."""
    fields = {
        "job_id": job.id,
        "webhook_id": job.webhook_id,
        "attempt": attempt,
        "status": outcome.status,
        "duration_ms": round(outcome.duration_ms, 1),
    }
    if outcome.blame is not None:
        fields["blame"] = outcome.blame  # "proxy": the egress proxy failed, not the endpoint
    return fields


def _log_failure(event: str) -> Callable[[asyncio.Task[None]], None]:
    def report(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(event, error=str(task.exception()))

    return report


def _accepted(job: Job) -> int:
    """Where a held job sorts: the order its publish was accepted in, the creation ms then
    the entry's sequence number within it (a job's first entry is the one its publish added;
    one that has been back in its queue since sorts after that ms's first entries). A zset
    score is exact below 2**53: ms * 1000 stays far below it."""
    seq = 999
    if job.sid is not None:
        ms, _, n = job.sid.partition("-")
        if ms == str(job.created_at_ms) and n.isdigit():
            seq = min(int(n), 999)
    return job.created_at_ms * 1000 + seq
