"""Process-local counters, exported through prometheus_client.

Small on purpose: counters with a fixed label set, set-on-read gauges and one histogram.
Every invariant of RELIABILITY.md has a counter here (R18). Labels come from closed sets, except
``webhook_id``, whose series are bounded (`Metrics.export_endpoints`).

The worker counts into plain dicts, as cheap per delivery as it gets (prometheus_client's own
Counter and Histogram cost about twice as much per delivery: issue 16's benchmark). `Metrics`
is a prometheus_client collector that turns them into metric families at scrape time, in a
registry of its own (several `Metrics` never collide) that also holds the standard process,
platform and GC collectors. prometheus_client writes the exposition: escaping, and OpenMetrics
when the scraper asks for it (`Metrics.exposition`).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import accumulate, groupby
from typing import TYPE_CHECKING

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from dispatcher.traffic import Pool


ENDPOINT_SERIES_MAX = 100  # webhooks with per-webhook gauges, at most: /metrics stays bounded
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
    "dispatcher_events_deduplicated_total": (
        "Published events answered as duplicates of an identical event within the dedup "
        "window (nothing enqueued), by this process's admin API."
    ),
    "dispatcher_task_runs_total": "Task runs ended, by status (succeeded, failed, dead).",
    "dispatcher_redis_clock_jump_seconds": "Last change of the Redis clock against local time.",
    "dispatcher_attempt_duration_seconds": "Duration of delivery attempts.",
    "dispatcher_in_flight": "HTTP requests in flight in this process.",
    "dispatcher_alert_active": "Whether a backlog alert is raised (1) or not (0), by name.",
    "dispatcher_queued_jobs": (
        "Jobs ready and unclaimed across every queue, those held for paused webhooks and those "
        "behind a FIFO lane's head included, at the last check."
    ),
    "dispatcher_paused_jobs": "Jobs held for paused webhooks, at the last check.",
    "dispatcher_ordering_waiting_jobs": (
        "Jobs of FIFO webhooks waiting behind their lane's head, at the last check."
    ),
    "dispatcher_ordering_oldest_head_age_seconds": (
        "How long the oldest head of a FIFO lane has held it (since it became the head, or "
        "its due time if later), at the last check."
    ),
    "dispatcher_queue_oldest_ready_age_seconds": (
        "Age of the oldest ready, unclaimed job across every queue, at the last check."
    ),
    "dispatcher_dlq_growth": "Jobs dead-lettered within alerts.dlq_window_s, at the last check.",
    "dispatcher_deferred_total": (
        "Jobs put back to wait without an attempt, by reason (rate_limit, max_in_flight, "
        "endpoint_capacity, breaker, paused, undecryptable)."
    ),
    "dispatcher_breaker_transitions_total": "Circuit breaker moves, by the state entered.",
    "dispatcher_webhooks_auto_disabled_total": (
        "Webhooks disabled for failing longer than delivery.disable_after_s."
    ),
    "dispatcher_orphans_requeued_total": "Queued jobs put back after their entry was deleted.",
    "dispatcher_test_sends_total": (
        "Test sends of the admin API (POST /v1/webhooks/{id}/test), by result: delivered (2xx), "
        "rejected (another answer), failed (no answer), limited (429, not sent)."
    ),
    "dispatcher_http_stale_connection_retries_total": (
        "POSTs sent again on a new connection after a kept-alive one closed without answering "
        "(the target may have processed the first: at-least-once)."
    ),
    "dispatcher_proxy_failures_total": (
        "Delivery attempts failed by the egress proxy itself (delivery.proxy_url unreachable, "
        "its CONNECT answer cut or malformed, 407): not counted against the endpoint's breaker."
    ),
    "dispatcher_oauth_token_requests_total": (
        "OAuth2 token requests for webhooks with auth, by result: ok (a token), rejected (an "
        "error answer), failed (no answer), malformed (a 2xx without a usable token)."
    ),
    "dispatcher_registry_applied_total": (
        "Webhook writes (creates, updates, deletes) made in another region and applied here, "
        "by source region."
    ),
    "dispatcher_registry_superseded_total": (
        "Webhook writes of another region not applied here because a newer version was here "
        "already (last writer wins), by source region."
    ),
    "dispatcher_registry_resyncs_total": (
        "Full reads of another region's webhooks (no cursor yet, or one older than its "
        "registry stream), by source region."
    ),
    "dispatcher_relay_sent_total": (
        "Jobs relayed from this region's outboxes and written in their region, by destination."
    ),
    "dispatcher_relay_resent_total": (
        "Outbox entries sent again (a relay died before its ack, or an apply got no answer), "
        "by destination: the counted at-least-once window."
    ),
    "dispatcher_relay_skipped_total": (
        "Relayed jobs the destination already had (a resend found its job): not enqueued "
        "twice, by destination."
    ),
    "dispatcher_relay_reapplied_total": (
        "Resent outbox entries the destination had no record of and enqueued (its record was "
        "gone or the first send never arrived), by destination: bounds relay duplicates."
    ),
    "dispatcher_relay_fenced_total": (
        "Relay batches refused by the destination because a newer relay holder had applied "
        "there, by destination."
    ),
    "dispatcher_outbox_jobs": (
        "Jobs in this region's outboxes waiting to be relayed, by destination region, at the "
        "last check (also counted in dispatcher_queued_jobs)."
    ),
    "dispatcher_outbox_oldest_age_seconds": (
        "Age of the oldest job waiting in an outbox, by destination region, at the last check."
    ),
    "dispatcher_endpoint_in_flight": (
        "Attempts in flight per webhook in this process, for webhooks with attempts in flight "
        f"or a cut limit only, at most {ENDPOINT_SERIES_MAX} (busiest first)."
    ),
    "dispatcher_endpoint_limit": (
        "This process's adaptive cap on a webhook's attempts in flight, for the same webhooks "
        "as dispatcher_endpoint_in_flight."
    ),
    "dispatcher_endpoints_tracked": (
        "Webhooks this process keeps traffic state for: jobs placed within the last 5 minutes "
        "or attempts in flight."
    ),
    "dispatcher_endpoints_busy": "Webhooks with attempts in flight in this process.",
    "dispatcher_endpoints_limited": (
        "Webhooks whose adaptive cap in this process was cut below the starting one "
        "(timeouts, refused connections, slow answers)."
    ),
    "dispatcher_endpoint_series_omitted": (
        "Webhooks busy or limited but left out of the per-webhook gauges by their bound of "
        f"{ENDPOINT_SERIES_MAX}."
    ),
}
_ENDPOINT_FAMILIES = ("dispatcher_endpoint_in_flight", "dispatcher_endpoint_limit")
_BUCKET_BOUNDS = (*map(repr, DURATION_BUCKETS_S), "+Inf")  # le="1.0": OpenMetrics canonical

Series = tuple[str, tuple[tuple[str, str], ...]]  # a metric's name and its sorted labels


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(DURATION_BUCKETS_S, value)] += 1
        self.total += value


class Metrics:
    def __init__(self) -> None:
        self.counters: defaultdict[Series, float] = defaultdict(float)
        self.gauges: dict[Series, float] = {}
        self.durations = Histogram()
        self.registry = CollectorRegistry()
        for collector in (self, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.counters[name, tuple(sorted(labels.items()))] += value

    @staticmethod
    def series(name: str, **labels: str) -> Series:
        """The key of a counter's series, for callers that count it often (``add``)."""
        return name, tuple(sorted(labels.items()))

    def add(self, series: Series, value: float = 1) -> None:
        """``inc`` for a series made once by ``series``."""
        self.counters[series] += value

    def get(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def set(self, name: str, value: float, /, **labels: str) -> None:
        self.gauges[name, tuple(sorted(labels.items()))] = value

    def gauge(self, name: str, /, **labels: str) -> float | None:
        return self.gauges.get((name, tuple(sorted(labels.items()))))

    def export_endpoints(self, pool: Pool) -> None:
        """The per-webhook gauges (R18), bounded whatever the number of webhooks: only webhooks
        with attempts in flight or a cut limit (`Pool.cut`) get series, at most
        ``ENDPOINT_SERIES_MAX`` (most in flight first, then lowest limit), and a webhook's
        series go at the next export once it is neither. Aggregates count every webhook."""
        for key in [k for k in self.gauges if k[0] in _ENDPOINT_FAMILIES]:
            del self.gauges[key]
        busy = limited = 0
        notable: list[tuple[int, float, str]] = []
        for webhook_id, endpoint in pool.endpoints.items():
            in_flight, cut = len(endpoint.started), pool.cut(endpoint)
            busy += in_flight > 0
            limited += cut
            if in_flight or cut:
                notable.append((-in_flight, endpoint.limit, webhook_id))
        shown = heapq.nsmallest(ENDPOINT_SERIES_MAX, notable)
        for in_flight, limit, webhook_id in shown:
            self.set(_ENDPOINT_FAMILIES[0], -in_flight, webhook_id=webhook_id)
            self.set(_ENDPOINT_FAMILIES[1], int(limit), webhook_id=webhook_id)
        self.set("dispatcher_endpoints_tracked", len(pool.endpoints))
        self.set("dispatcher_endpoints_busy", busy)
        self.set("dispatcher_endpoints_limited", limited)
        self.set("dispatcher_endpoint_series_omitted", len(notable) - len(shown))

    def collect(self) -> Iterator[Metric]:
        """This process's counters, gauges and attempt durations as metric families (the
        prometheus_client collector protocol); a counter's name ends in ``_total``."""
        for name, series in groupby(sorted(self.counters.items()), key=lambda s: s[0][0]):
            counter = CounterMetricFamily(name, _HELP.get(name, name))
            for (_, labels), value in series:
                counter.add_sample(f"{counter.name}_total", dict(labels), value)
            yield counter
        for name, series in groupby(sorted(self.gauges.items()), key=lambda s: s[0][0]):
            gauge = GaugeMetricFamily(name, _HELP.get(name, name))
            for (_, labels), value in series:
                gauge.add_sample(name, dict(labels), value)
            yield gauge
        name = "dispatcher_attempt_duration_seconds"
        buckets = list(zip(_BUCKET_BOUNDS, accumulate(self.durations.counts), strict=True))
        yield HistogramMetricFamily(name, _HELP[name], buckets, self.durations.total)

    def render(self) -> str:
        """Every metric of this registry in the classic Prometheus text format."""
        return generate_latest(self.registry).decode()

    def exposition(self, accept: str, extra: Iterable[Metric] = ()) -> tuple[bytes, str]:
        """The body and Content-Type of a scrape: OpenMetrics when ``accept`` (the scraper's
        Accept header) asks for it, else the text format; ``extra`` families (read at scrape
        time) follow this registry's."""
        encode, content_type = choose_encoder(accept)
        return encode(_Scrape(self.registry, extra)), content_type


@dataclass(frozen=True)
class _Scrape:
    """One scrape's collector: a registry, then families computed for this scrape."""

    registry: CollectorRegistry
    extra: Iterable[Metric]

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.extra


def gauge_family(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
    """One gauge family computed at scrape time (queue depths, DLQ size)."""
    family = GaugeMetricFamily(name, help_text)
    for labels, value in samples:
        family.add_sample(name, labels, value)
    return family
