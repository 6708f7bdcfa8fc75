"""Process-local counters, rendered in the Prometheus text format.

Small on purpose: counters with a fixed label set, set-on-read gauges and one histogram.
Every invariant of RELIABILITY.md has a counter here (R18).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_HELP = {
    "dispatcher_deliveries_total": "Delivery attempts by outcome and HTTP status class.",
    "dispatcher_dead_lettered_total": "Jobs moved to the DLQ, by reason.",
    "dispatcher_retries_scheduled_total": "Failed attempts scheduled for a retry.",
    "dispatcher_reclaimed_total": "Deliveries taken over from a dead or stalled worker.",
    "dispatcher_stale_owner_rejected_total": "Outcomes refused because the claim was stale.",
    "dispatcher_entry_missing_total": "Pending entries found deleted under the daemon.",
    "dispatcher_malformed_total": "Stream entries or records that could not be parsed.",
    "dispatcher_nogroup_recoveries_total": "Consumer groups recreated after NOGROUP.",
    "dispatcher_redis_errors_total": "Redis commands that failed, by loop.",
    "dispatcher_promoted_total": "Delayed jobs moved to the ready stream.",
    "dispatcher_redis_clock_jump_seconds": "Last change of the Redis clock against local time.",
    "dispatcher_attempt_duration_seconds": "Duration of delivery attempts.",
    "dispatcher_in_flight": "HTTP requests in flight in this process.",
    "dispatcher_alert_active": "Whether a backlog alert is raised (1) or not (0), by name.",
    "dispatcher_queued_jobs": "Jobs ready and unclaimed across every queue, at the last check.",
    "dispatcher_queue_oldest_ready_age_seconds": (
        "Age of the oldest ready, unclaimed job across every queue, at the last check."
    ),
    "dispatcher_dlq_growth": "Jobs dead-lettered within alerts.dlq_window_s, at the last check.",
    "dispatcher_deferred_total": (
        "Jobs put back to wait without an attempt, by reason (rate_limit, max_in_flight, "
        "endpoint_capacity, breaker)."
    ),
    "dispatcher_breaker_transitions_total": "Circuit breaker moves, by the state entered.",
    "dispatcher_webhooks_auto_disabled_total": (
        "Webhooks disabled for failing longer than delivery.disable_after_s."
    ),
    "dispatcher_orphans_requeued_total": "Queued jobs put back after their entry was deleted.",
    "dispatcher_http_stale_connection_retries_total": (
        "POSTs sent again on a new connection after a kept-alive one closed without answering "
        "(the target may have processed the first: at-least-once)."
    ),
    "dispatcher_endpoint_in_flight": "Attempts in flight per webhook in this process.",
    "dispatcher_endpoint_limit": "This process's adaptive cap on a webhook's attempts in flight.",
}


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(DURATION_BUCKETS_S, value)] += 1
        self.total += value


class Metrics:
    def __init__(self) -> None:
        self.counters: defaultdict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(
            float
        )
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.durations = Histogram()

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.counters[name, tuple(sorted(labels.items()))] += value

    def get(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def set(self, name: str, value: float, /, **labels: str) -> None:
        self.gauges[name, tuple(sorted(labels.items()))] = value

    def gauge(self, name: str, /, **labels: str) -> float | None:
        return self.gauges.get((name, tuple(sorted(labels.items()))))

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in sorted(self.counters.items()):
            if name not in seen:
                seen.add(name)
                lines += [f"# HELP {name} {_HELP.get(name, name)}", f"# TYPE {name} counter"]
            lines.append(f"{name}{_labels(labels)} {value:g}")
        for (name, labels), value in sorted(self.gauges.items()):
            if name not in seen:
                seen.add(name)
                lines += [f"# HELP {name} {_HELP.get(name, name)}", f"# TYPE {name} gauge"]
            lines.append(f"{name}{_labels(labels)} {value:g}")
        lines += self._histogram("dispatcher_attempt_duration_seconds", self.durations)
        return "\n".join(lines) + "\n"

    @staticmethod
    def _histogram(name: str, hist: Histogram) -> list[str]:
        lines = [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip((*DURATION_BUCKETS_S, float("inf")), hist.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{le="{le}"}} {running}')
        lines += [f"{name}_sum {hist.total:g}", f"{name}_count {running}"]
        return lines


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"


def render_gauges(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> str:
    """One gauge family computed at scrape time (queue depths, DLQ size), in the text format."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [
        f"{name}{_labels(tuple(sorted(labels.items())))} {value:g}" for labels, value in samples
    ]
    return "\n".join(lines) + "\n"
