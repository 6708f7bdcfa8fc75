"""The shapes of the admin API's and ``Client``'s answers and requests, declared once.

Each shape is a ``TypedDict``: a plain dict at run time (the answers stay the dicts that
``Client`` callers and the API's JSON rely on), a checked structure for mypy. openapi.json
documents the same shapes for HTTP clients; ``tests/test_shapes.py`` holds the two together
(property names, required properties, JSON types and enums, nested shapes included), and
``tests/spec_check.py`` checks every answer the admin tests see against openapi.json.

A key that openapi.json does not require is ``NotRequired`` here, even where today's answers
always carry it. RFC 3339 times are ``str`` (``None`` where the spec allows null). This
module is pure: it imports nothing of dispatcher, so any layer may import it.

No ``from __future__ import annotations`` here: on Python 3.11 a TypedDict whose annotations
are strings cannot see ``NotRequired``, and every key would count as required.
"""
# ruff: noqa: I002, N818 - no future import (above); the error shapes are named as in openapi.json

from typing import Any, Literal, NotRequired, TypedDict

BreakerState = Literal["closed", "open", "half_open"]
JobStateName = Literal["queued", "active", "scheduled", "delivered", "dead"]
WaitingFor = Literal[
    "rate_limit",
    "max_in_flight",
    "endpoint_capacity",
    "breaker",
    "paused",
    "ordering",
    "undecryptable",
]
Ordering = Literal["none", "fifo"]
SignatureScheme = Literal["v1", "v1a"]
Priority = Literal["high", "normal", "low"]
RefusalReason = Literal["payload_lost", "webhook_deleted", "webhook_disabled", "malformed"]
AlertName = Literal["queued_max", "oldest_ready_age_s", "dlq_growth"]
OperationKind = Literal["replay", "purge"]
OperationState = Literal["running", "succeeded", "failed"]
StatsWindow = Literal["1h", "24h", "7d"]
JobKind = Literal["webhook", "task"]
TaskRunStatus = Literal["succeeded", "failed", "dead"]
TaskQueue = Literal["maintenance", "analytics"]


# --- errors ------------------------------------------------------------------------------


class ErrorDetail(TypedDict):
    code: str
    message: str


class Error(TypedDict):
    """Every 4xx/5xx answer: ``{"error": {"code", "message"}}`` (some add fields below)."""

    error: ErrorDetail


class ConfirmationRequired(Error):
    """409 of ``DELETE /v1/dlq`` without ``confirm``."""

    would_purge: int
    retention_s: NotRequired[float]
    within_retention: NotRequired[int]


class UnknownQueue(Error):
    known_queues: list[str]


class Refusal(TypedDict):
    id: str
    reason: RefusalReason
    message: str


class NotReplayable(Error):
    refused: list[Refusal]


# --- webhooks ----------------------------------------------------------------------------


class RateLimit(TypedDict):
    """Sent with ``burst`` optional; answered with both (``burst`` defaults to a second)."""

    per_second: float
    burst: NotRequired[float]


class Breaker(TypedDict):
    state: NotRequired[BreakerState]
    failing_since: NotRequired[str | None]
    opened_at: NotRequired[str | None]
    retry_at: NotRequired[str | None]
    last_error: NotRequired[str | None]


class TlsSettings(TypedDict, total=False):
    """A webhook's own TLS settings (PEM text); ``client_key_pem`` is answered as ``***``."""

    ca_pem: str
    client_cert_pem: str
    client_key_pem: str


class OAuth2Settings(TypedDict):
    """OAuth2 client credentials a webhook's deliveries are authorised with; ``client_secret``
    is answered as ``***``."""

    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: str
    client_secret: str
    scope: NotRequired[str]


class Webhook(TypedDict):
    id: str
    tenant_id: str
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: NotRequired[str | None]
    rate_limit: NotRequired[RateLimit | None]
    max_in_flight: NotRequired[int | None]
    ordering: NotRequired[Ordering]
    signature_scheme: NotRequired[SignatureScheme]
    public_key: NotRequired[str | None]  # v1a: the whpk_ key receivers verify with
    tls: NotRequired[TlsSettings | None]
    auth: NotRequired[OAuth2Settings | None]
    region: NotRequired[str | None]  # the region that delivers its jobs; null without regions
    queue: str
    headers: NotRequired[dict[str, str]]
    description: NotRequired[str]
    paused: NotRequired[bool]
    filter: NotRequired[dict[str, Any] | None]
    created_at: str | None
    updated_at: str | None
    breaker: NotRequired[Breaker | None]
    failing_since: NotRequired[str | None]


class WebhookWithSecret(Webhook):
    """The webhook as created or rotated: the only answers that show its secret (``whsec_``
    for v1, the ``whsk_`` signing key for v1a)."""

    secret: str


class WebhookList(TypedDict):
    """``GET /v1/webhooks``: a tenant's webhooks (one page: ``next_cursor`` None), or a page of
    every tenant's with ``next_cursor`` (None at the end)."""

    items: list[Webhook]
    next_cursor: str | None


class RecentJob(TypedDict):
    """One job of ``GET /v1/webhooks/{id}/jobs``."""

    id: str
    state: JobStateName
    event_type: str
    attempt: int
    created_at: str | None
    finished_at: str | None
    last_status: int | None
    last_error: str | None


class WebhookJobs(TypedDict):
    """``GET /v1/webhooks/{id}/jobs`` and ``Client.webhook_jobs``."""

    items: list[RecentJob]
    scanned: int


class WebhookSettings(TypedDict, total=False):
    """The optional fields of a webhook, as created or changed."""

    event_types: list[str]
    secret: str | None
    signature_scheme: SignatureScheme
    rate_limit: RateLimit | None
    max_in_flight: int | None
    ordering: Ordering
    queue: str
    headers: dict[str, str] | None
    description: str
    paused: bool
    filter: dict[str, Any] | None
    tls: TlsSettings | None
    auth: OAuth2Settings | None
    region: str | None  # one of [regions]; null: the home region of the API or Client


class WebhookCreate(WebhookSettings):
    """The body of ``POST /v1/webhooks`` (``Client.create_webhook``'s arguments)."""

    tenant_id: str
    url: str


class WebhookChange(WebhookSettings, total=False):
    """The body of ``PATCH /v1/webhooks/{id}`` (``Client.update_webhook``'s changes)."""

    tenant_id: str
    url: str
    enabled: bool


class SecretRotation(TypedDict):
    """The body of ``POST /v1/webhooks/{id}/rotate-secret``."""

    grace_s: NotRequired[float]
    signature_scheme: NotRequired[SignatureScheme]  # of the new key; absent: the webhook's own


# --- events ------------------------------------------------------------------------------


class Delivery(TypedDict):
    """The body of ``POST /v1/webhooks/{id}/deliveries``."""

    event_type: str
    payload: Any
    idempotency_key: NotRequired[str | None]
    ordering_key: NotRequired[str | None]
    deliver_at: NotRequired[str | None]
    priority: NotRequired[Priority]


class Event(Delivery):
    """The body of ``POST /v1/events``; an event of ``Client.publish_many``."""

    tenant_id: str
    dedup_window_s: NotRequired[int | None]


class PublishedJob(TypedDict):
    id: str
    webhook_id: str


class PublishAnswer(TypedDict):
    event_id: str
    jobs: list[PublishedJob]
    matched: int
    #: True: an identical event's answer (200, nothing enqueued).
    deduplicated: bool


# --- jobs and the DLQ --------------------------------------------------------------------


class Attempt(TypedDict):
    at: str | None
    status: int | None
    duration_ms: float
    error: str | None
    late: NotRequired[bool]


class Job(TypedDict):
    """A delivery (``kind`` webhook) or a task run (``kind`` task: ``webhook_id`` and
    ``tenant_id`` null, ``event_type`` the task's name, ``delivered`` once it succeeded)."""

    id: str
    kind: JobKind
    event_id: NotRequired[str]
    webhook_id: str | None
    tenant_id: str | None
    event_type: str
    queue: NotRequired[str]
    priority: NotRequired[str]
    state: JobStateName
    attempt: int
    stalls: NotRequired[int]
    created_at: str | None
    processed_at: str | None
    finished_at: str | None
    next_attempt_at: str | None
    last_error: str | None
    last_status: int | None
    dead_reason: NotRequired[str | None]
    attempts: list[Attempt]
    waiting_for: NotRequired[WaitingFor | None]
    breaker: NotRequired[BreakerState]
    retry_until: NotRequired[str | None]


class DeadJob(Job):
    """A job in the DLQ, with its payload (null when it was lost) and its DLQ entry id."""

    payload: Any
    dlq_id: str | None


class DlqItem(TypedDict):
    id: str | None
    dlq_id: NotRequired[str]
    kind: NotRequired[JobKind]
    webhook_id: str | None
    tenant_id: NotRequired[str | None]
    event_type: str | None
    attempt: int
    last_error: str | None
    last_status: NotRequired[int | None]
    reason: NotRequired[str]
    failed_at: str | None


class DlqPage(TypedDict):
    items: list[DlqItem]
    next_cursor: str | None


class ReplayIds(TypedDict):
    """A body of ``POST /v1/dlq/replay``: these dead jobs (``Client.replay``)."""

    ids: list[str]


class ReplayMatching(TypedDict):
    """A body of ``POST /v1/dlq/replay``: every dead job of the filters
    (``Client.replay_matching``)."""

    all: Literal[True]
    webhook_id: NotRequired[str | None]
    tenant_id: NotRequired[str | None]
    since: NotRequired[str | None]
    until: NotRequired[str | None]
    reason: NotRequired[str | None]


class Replayed(TypedDict):
    """The answer of a replay: by ids ``{"replayed", "not_found", "not_dead"}``
    (``Client.replay``), of everything matching ``{"replayed", "skipped",
    "skipped_reasons"}`` (``Client.replay_matching``)."""

    replayed: int
    not_found: NotRequired[list[str]]
    not_dead: NotRequired[list[str]]
    skipped: NotRequired[int]
    skipped_reasons: NotRequired[dict[str, int]]


class Operation(TypedDict):
    """A background replay or purge, as ``GET /v1/operations/{id}`` shows it."""

    id: str
    kind: OperationKind
    state: OperationState
    done: int
    total: int | None
    replayed: NotRequired[int]
    purged: NotRequired[int]
    skipped: NotRequired[int]
    skipped_reasons: NotRequired[dict[str, int]]
    created_at: str
    updated_at: str
    finished_at: str | None
    error: str | None


class ReplayStarted(TypedDict):
    """202 of ``POST /v1/dlq/replay``: the first page's counts, the rest in ``operation``."""

    replayed: int
    skipped: int
    skipped_reasons: dict[str, int]
    operation: Operation


class Purged(TypedDict):
    """The answer of a confirmed purge (``Client.purge_dlq``, 200 of ``DELETE /v1/dlq``)."""

    retention_s: float
    within_retention: int
    purged: int


class PurgeStarted(Purged):
    """202 of ``DELETE /v1/dlq``: the first page's count, the rest in ``operation``."""

    operation: Operation


# --- delivery stats ----------------------------------------------------------------------


class Percentiles(TypedDict):
    """Nearest-rank percentiles in ms from the histogram (within 5%); null when empty."""

    p50: float | None
    p95: float | None
    p99: float | None


class StatsPoint(TypedDict):
    t: str
    attempts: int
    delivered: int
    failed: int
    p95_ms: float | None


class MinuteStats(TypedDict):
    """One minute of ``GET /v1/stats``."""

    t: str
    delivered: int
    failed: int
    dead: int
    avg_processing_ms: float | None


class Stats(TypedDict):
    """``GET /v1/stats`` and ``Client.stats``: the daemon's outcomes per minute."""

    window: Literal["1h"]
    series: list[MinuteStats]


class WebhookStats(TypedDict):
    """``GET /v1/webhooks/{id}/stats`` and ``Client.webhook_stats``."""

    webhook_id: str
    window: StatsWindow
    attempts: int
    delivered: int
    failed: int
    success_rate: float | None
    latency_ms: Percentiles
    lag_ms: Percentiles
    series: list[StatsPoint]


class TestSendRequest(TypedDict):
    """The optional body of ``POST /v1/webhooks/{id}/test``."""

    event_type: NotRequired[str]
    payload: NotRequired[Any]


class TestSend(TypedDict):
    """The verdict of one test send (``POST /v1/webhooks/{id}/test``, ``Client.test_webhook``)."""

    delivered: bool
    status: int | None
    duration_ms: float
    error: str | None
    response_snippet: str | None
    signature_accepted: bool | None
    message_id: str


# --- tasks ---------------------------------------------------------------------------------


class TaskEnqueued(TypedDict):
    """One task run enqueued (``Client.enqueue_task``, 202 of ``POST /v1/tasks/{name}/run``)."""

    id: str
    name: str
    queue: TaskQueue


class TaskInfo(TypedDict):
    """A registered task, its schedule and its last settled run."""

    name: str
    queue: TaskQueue
    every_s: float | None
    last_run_at: str | None
    last_status: TaskRunStatus | None
    next_run_at: str | None


class TaskList(TypedDict):
    """``GET /v1/tasks`` (``Client.list_tasks``): every task a daemon registered, by name."""

    items: list[TaskInfo]


# --- queues and status -------------------------------------------------------------------


class QueuePaused(TypedDict):
    queue: str
    paused: bool


class RecentCount(TypedDict):
    window_s: int
    count: int


class QueueCounts(TypedDict):
    name: NotRequired[str]
    queued: NotRequired[int]
    active: NotRequired[int]
    scheduled: NotRequired[int]
    paused: NotRequired[bool]


class Worker(TypedDict):
    id: str
    host: str | None
    pid: int | None
    started_at: str | None
    in_flight: int | None
    queues: NotRequired[list[str] | None]
    last_seen_at: NotRequired[str | None]


class Alert(TypedDict):
    name: AlertName
    value: float
    threshold: float
    since: str


class TrippedBreaker(Breaker):
    webhook_id: NotRequired[str]


class Breakers(TypedDict):
    open: NotRequired[int]
    half_open: NotRequired[int]
    tripped: NotRequired[list[TrippedBreaker]]
    parked: NotRequired[int]


class OutboxCounts(TypedDict):
    """One outbox: jobs published in a region for another, not yet relayed there."""

    depth: int
    lag_ms: int | None  # how long its oldest entry has waited; None when it is empty


class RegionCounts(TypedDict):
    """One region in ``GET /v1/status`` (with ``[regions]``): its own counts, read from its
    Redis, or ``reachable: false`` and ``error`` when it did not answer within a second."""

    reachable: bool
    queued: NotRequired[int]
    active: NotRequired[int]
    scheduled: NotRequired[int]
    dlq_size: NotRequired[int]
    paused: NotRequired[list[str]]
    outbox: NotRequired[dict[str, OutboxCounts]]  # by destination region
    error: NotRequired[str]


class StatusCounts(TypedDict):
    """``Client.status()``: the dashboard of ``GET /v1/status`` without its ``alerts`` (the
    daemon serving the API judges those)."""

    queued: int
    active: int
    scheduled: int
    dlq_size: int
    failed_recent: RecentCount
    delivered_recent: RecentCount
    dead_recent: NotRequired[RecentCount]
    deduplicated_recent: NotRequired[RecentCount]
    avg_processing_ms: float | None
    paused: list[str]
    paused_jobs: NotRequired[int]  # held for paused webhooks (also in scheduled)
    ordering_jobs: NotRequired[int]  # behind a FIFO lane's head (also in scheduled)
    queues: NotRequired[list[QueueCounts]]
    redis: dict[str, Any]
    workers: list[Worker]
    breakers: NotRequired[Breakers]
    region: NotRequired[str]  # with [regions]: the region that answers (the counts above)
    regions: NotRequired[dict[str, RegionCounts]]  # every region, this one included


class Status(StatusCounts):
    """The answer of ``GET /v1/status``."""

    alerts: list[Alert]


class Health(TypedDict):
    """``GET /healthz``: the process answers."""

    status: NotRequired[Literal["ok"]]


class Ready(TypedDict):
    """``GET /readyz`` when Redis answers."""

    status: NotRequired[Literal["ready"]]
