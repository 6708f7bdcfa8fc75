"""Webhook health: the outcomes the worker reports to the circuit breakers, and the breaker loop.

The delivery path counts each attempt's outcome here (``note``), for webhooks that fail or
whose breaker exists. The breaker loop reports the counts each second, or at once when a probe
has answered or a webhook has failed often enough to trip, and runs the breakers' timed side:
half-open probes, jobs released when a breaker closes or room frees (waiting.py), and the
auto-disable of webhooks failing for ``delivery.disable_after_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import structlog

from dispatcher import loops
from dispatcher.model import rfc3339
from dispatcher.queue import breakers, pauses, waiting
from dispatcher.queue.breakers import Health
from dispatcher.queue.keys import shard_of
from dispatcher.queue.webhooks import disable_failing

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from dispatcher.config import DeliveryConfig
    from dispatcher.metrics import Metrics
    from dispatcher.queue.store import Store
    from dispatcher.sender import Outcome

log = structlog.get_logger()

BREAKER_TICK_S = 1.0


class HealthWatch:
    """Outcomes per webhook since the last breaker report, and the loop that reports them."""

    def __init__(
        self,
        store: Store,
        shards: list[Store],
        metrics: Metrics,
        stop: asyncio.Event,
        cfg: Callable[[], DeliveryConfig],
    ) -> None:
        self.store = store
        self.shards = shards  # the served shards, a list the worker extends
        self.metrics = metrics
        self.stop = stop
        self.cfg = cfg  # read at each use: a reload changes it
        # outcomes per webhook since the last breaker report; only webhooks that failed or
        # whose breaker exists (`watched`) are reported
        self._health: dict[str, Health] = {}
        self.watched: set[str] = set()
        self.probes: set[str] = set()  # jobs sent as their breaker's probe
        self._report_now = asyncio.Event()
        self._next_tick = 0.0

    # --- from the delivery path ----------------------------------------------------------------

    def loaded(
        self, webhook_ids: Iterable[str], with_breaker: Iterable[str], failing: Iterable[str]
    ) -> None:
        """Claimed jobs' webhooks were loaded: watch those with a breaker or a run of failures
        (a success must end it)."""
        self.watched.difference_update(webhook_ids)
        self.watched.update(with_breaker)
        self.watched.update(failing)

    def note(self, webhook_id: str, outcome: Outcome) -> None:
        """Count the outcome for the breaker report (webhooks that fail or have a breaker)."""
        health = self._health.get(webhook_id)
        if health is None:
            if outcome.delivered and webhook_id not in self.watched:
                return
            health = self._health[webhook_id] = Health()
        if outcome.delivered:
            health.ok += 1
        else:
            health.failed += 1
            health.last_error = outcome.error or ""
            if health.failed == breakers.FEWEST_ATTEMPTS:
                self._report_now.set()

    def answered(self, job_id: str) -> None:
        """An attempt ended: if it was a probe, its outcome is reported at once."""
        if job_id in self.probes:
            self.probes.discard(job_id)
            self._report_now.set()

    # --- the breaker loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Report outcomes to the breakers each second, or at once when a probe has answered
        or a webhook has failed often enough to trip; and run the breakers' timed side."""
        outage = loops.Outage("breakers", self.metrics)
        self._next_tick = time.monotonic()
        await loops.run_every(self._step, outage, self.stop, BREAKER_TICK_S, pause=self._pause)

    async def _step(self) -> None:
        await self._report()
        if time.monotonic() >= self._next_tick:
            self._next_tick = time.monotonic() + BREAKER_TICK_S
            await self._tend()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BREAKER_TICK_S):
                await self._report_now.wait()
        self._report_now.clear()

    async def _report(self) -> None:
        if not self._health:
            return
        health, self._health = self._health, {}
        by_shard: defaultdict[int, dict[str, Health]] = defaultdict(dict)
        for webhook_id, h in health.items():
            by_shard[shard_of(webhook_id)][webhook_id] = h
        try:
            changes = [
                change
                for shard, part in by_shard.items()
                for change in await breakers.report(
                    self.store.shard(shard), part, open_s=self.cfg().breaker_open_s
                )
            ]
        except BaseException:
            for webhook_id, h in health.items():  # keep them for the next report
                mine = self._health.setdefault(webhook_id, Health())
                mine.ok += h.ok
                mine.failed += h.failed
                mine.last_error = mine.last_error or h.last_error
            raise
        for change in changes:
            self.watched.add(change.webhook_id)
            self.metrics.inc("dispatcher_breaker_transitions_total", state=change.state)
            if change.state == breakers.OPEN:
                log.warning(
                    "breaker.opened",
                    webhook_id=change.webhook_id,
                    retry_at=rfc3339(change.retry_at_ms),
                    last_error=health[change.webhook_id].last_error or None,
                )
            else:
                log.info("breaker.closed", webhook_id=change.webhook_id)

    async def _tend(self) -> None:
        for shard in self.shards:
            await self._tend_shard(shard)
            for webhook_id, count in await waiting.tick(shard):
                log.info("waiting.jobs_released", webhook_id=webhook_id, jobs=count)
            for webhook_id, count in await pauses.drain(shard):
                log.info("pause.jobs_released", webhook_id=webhook_id, jobs=count)

    async def _tend_shard(self, shard: Store) -> None:
        cfg = self.cfg()
        done = await breakers.tick(
            shard,
            probe_timeout_s=cfg.timeout_s + cfg.stall_timeout_s,
            disable_after_s=cfg.disable_after_s,
        )
        for webhook_id, probe in done.probes:
            self.metrics.inc("dispatcher_breaker_transitions_total", state=breakers.HALF_OPEN)
            log.info("breaker.half_open", webhook_id=webhook_id, probe_job_id=probe or None)
        for webhook_id, count in done.released:
            log.info("breaker.jobs_released", webhook_id=webhook_id, jobs=count)
        for webhook_id, since_ms, last_error in done.to_disable:
            reason = (
                f"no successful delivery since {rfc3339(since_ms)}"
                f" (delivery.disable_after_s = {self.cfg().disable_after_s:g})"
                + (f"; last error: {last_error}" if last_error else "")
            )
            if await disable_failing(self.store, webhook_id, reason):  # this region's only
                log.warning("webhook.disabled", webhook_id=webhook_id, reason=reason)
                self.metrics.inc("dispatcher_webhooks_auto_disabled_total")
