"""Backlog alerts: thresholds on what ``queue.backlog.measure()`` reads; pure, no IO.

An alert is raised when its value reaches its threshold and cleared when the value falls
below 90% of it, so a value wavering at the threshold does not raise and clear it on every
check. Each change is logged once (``alert.raised``, ``alert.cleared``); the active alerts show
in ``/v1/status`` and every alert's state and value in ``/metrics``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from dispatcher.model import rfc3339

if TYPE_CHECKING:
    from dispatcher.config import AlertsConfig
    from dispatcher.metrics import Metrics
    from dispatcher.queue.backlog import Backlog
    from dispatcher.shapes import Alert, AlertName

log = structlog.get_logger()

NAMES: Final[tuple[AlertName, ...]] = ("queued_max", "oldest_ready_age_s", "dlq_growth")  # alerts.*
CLEAR_BELOW: Final = 0.9  # of the threshold


@dataclass(slots=True)
class _Raised:
    value: float
    threshold: float
    since_ms: int


class Alerts:
    """The alerts of one daemon: fed a measurement every few seconds, remembers what is raised."""

    def __init__(self, cfg: AlertsConfig) -> None:
        self.cfg = cfg  # a reload swaps it
        self._raised: dict[AlertName, _Raised] = {}
        self._dlq_samples: deque[tuple[int, int]] = deque()  # (Redis time ms, entries added)
        self.values: dict[str, float] = {}
        #: with regions, per destination: jobs in the outboxes and the oldest one's age (s)
        self.outboxes: dict[str, tuple[int, float]] = {}

    def observe(self, backlog: Backlog) -> None:
        """Judge one measurement: raise and clear alerts, and log each change."""
        self.values = {
            # a paused webhook's backlog too, the jobs behind FIFO lanes' heads, and those
            # waiting in the outboxes to be relayed to another region (with regions)
            "queued_max": backlog.queued + backlog.held + backlog.ordering + backlog.outbox,
            "oldest_ready_age_s": round(backlog.oldest_ready_age_s, 1),
            "dlq_growth": self._dlq_growth(backlog.now_ms, backlog.dlq_added),
            "paused_jobs": backlog.held,  # not an alert of its own: a gauge
            "ordering_jobs": backlog.ordering,  # gauges too
            "ordering_oldest_head_age_s": round(backlog.oldest_head_age_s, 1),
        }
        self.outboxes = {
            region: (outbox.depth, _age_s(backlog.now_ms, outbox.oldest_ms))
            for region, outbox in backlog.outboxes.items()
        }
        for name in NAMES:
            self._judge(name, self.values[name], getattr(self.cfg, name), backlog)

    def active(self) -> list[Alert]:
        """The raised alerts, as ``/v1/status`` shows them."""
        return [
            {
                "name": name,
                "value": raised.value,
                "threshold": raised.threshold,
                "since": rfc3339(raised.since_ms) or "",  # since_ms is always set
            }
            for name, raised in self._raised.items()
        ]

    def export(self, metrics: Metrics) -> None:
        """Each alert's state and the measured values, as gauges."""
        for name in NAMES:
            metrics.set("dispatcher_alert_active", float(name in self._raised), name=name)
        if self.values:
            metrics.set("dispatcher_queued_jobs", self.values["queued_max"])
            metrics.set(
                "dispatcher_queue_oldest_ready_age_seconds", self.values["oldest_ready_age_s"]
            )
            metrics.set("dispatcher_dlq_growth", self.values["dlq_growth"])
            metrics.set("dispatcher_paused_jobs", self.values["paused_jobs"])
            metrics.set("dispatcher_ordering_waiting_jobs", self.values["ordering_jobs"])
            metrics.set(
                "dispatcher_ordering_oldest_head_age_seconds",
                self.values["ordering_oldest_head_age_s"],
            )
        for region, (depth, age_s) in self.outboxes.items():
            metrics.set("dispatcher_outbox_jobs", depth, region=region)
            metrics.set("dispatcher_outbox_oldest_age_seconds", age_s, region=region)

    def _judge(self, name: AlertName, value: float, threshold: float, backlog: Backlog) -> None:
        raised = self._raised.get(name)
        if raised is None:
            if threshold > 0 and value >= threshold:
                self._raised[name] = _Raised(value, threshold, backlog.now_ms)
                where = {"queue": backlog.oldest_queue} if name == "oldest_ready_age_s" else {}
                log.warning("alert.raised", name=name, value=value, threshold=threshold, **where)
            return
        if threshold <= 0 or value < threshold * CLEAR_BELOW:
            del self._raised[name]
            log.info(
                "alert.cleared",
                name=name,
                value=value,
                threshold=threshold,
                raised_for_s=round((backlog.now_ms - raised.since_ms) / 1000, 1),
            )
            return
        raised.value, raised.threshold = value, threshold

    def _dlq_growth(self, now_ms: int, added: int) -> int:
        """Entries added to the DLQ within the window, from the samples of its counter.

        Until the daemon has watched a whole window, the growth counts from its first sample.
        """
        samples = self._dlq_samples
        if samples and added < samples[-1][1]:
            samples.clear()  # the DLQ stream was deleted and started again from 0
        samples.append((now_ms, added))
        window_start_ms = now_ms - int(self.cfg.dlq_window_s * 1000)
        # keep the newest sample at or before the window's start: the growth counts from it
        while len(samples) > 1 and samples[1][0] <= window_start_ms:
            samples.popleft()
        return added - samples[0][1]


def _age_s(now_ms: int, since_ms: int | None) -> float:
    return 0.0 if since_ms is None else round(max(now_ms - since_ms, 0) / 1000, 1)
