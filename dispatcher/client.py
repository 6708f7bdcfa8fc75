"""The producer API: register webhooks and publish events straight into Redis.

``Client`` and the admin API share the queue layer, so both give the same answers and the
same errors (``DispatcherError`` subclasses whose ``code`` matches the API's). The answers are
the API's shapes, declared in ``dispatcher.shapes`` (plain dicts, typed for mypy).

With regions (docs/regions.md), a Client reaches every region: a job id's look-ups and changes
go to the region it names, a webhook's views to its region, and what spans the deployment
(queue pause and resume, DLQ listing, purge, replay of everything matching) to every region in
turn, home first; a region that does not answer raises ``RegionUnavailable`` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, cast

import orjson

from dispatcher import testsend
from dispatcher.channel import Channels
from dispatcher.config import DeliveryConfig, SecurityConfig
from dispatcher.config_values import BadValueError, Raw, key_list, region_url
from dispatcher.crypto import Keyring
from dispatcher.errors import (
    DispatcherError,
    InvalidField,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    UnknownQueue,
)
from dispatcher.ids import (
    REGION_PATTERN,
    TASK_QUEUES,
    is_job_id,
    is_region_name,
    new_event_ids,
    region_of,
)
from dispatcher.model import (
    MAX_ID_TEXT,
    Priority,
    check_event_type,
    check_ordering_key,
    check_queue,
    check_signature_scheme,
    check_tenant_id,
    check_unicode,
    rfc3339,
    time_ms,
)
from dispatcher.proxy import Proxy
from dispatcher.queue import (
    control,
    dlq,
    dlq_ops,
    publishing,
    recent,
    records,
    resend,
    webhooks,
)
from dispatcher.queue import stats as hook_stats
from dispatcher.queue import status as queue_status
from dispatcher.queue import tasks as queue_tasks
from dispatcher.queue.regions import Regions, reaching
from dispatcher.queue.store import Store
from dispatcher.ssrf import AddressPolicy
from dispatcher.tasks import check_name as check_task_name
from dispatcher.tasks import check_queue as check_task_queue

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime
    from types import TracebackType

    from dispatcher import shapes
    from dispatcher.sender import HttpSender

DEFAULT_MAX_PAYLOAD_BYTES = 262_144
DEFAULT_DLQ_RETENTION_S = 604_800.0
DEFAULT_PAYLOAD_RETENTION_S = 3_600.0  # jobs.payload_retention_s's default
DEFAULT_TIMEOUT_S = DeliveryConfig().timeout_s  # a test send's deadline: delivery.timeout_s
MAX_GRACE_S = 30 * 86_400
MAX_AGE_S = 100 * 365 * 86_400
_EVENT_FIELDS = frozenset(
    {
        "tenant_id",
        "event_type",
        "payload",
        "idempotency_key",
        "deliver_at",
        "priority",
        "dedup_window_s",
        "ordering_key",
    }
)


class Client:
    """``async with Client.from_url(url) as client:`` -- closes its connections on exit.

    ``dedup_window_s`` is the default of ``publish``'s (0: off); a Client has no config file,
    so the daemon's admin API passes its ``events.dedup_window_s`` here.

    ``test_webhook`` sends through ``sender`` (the daemon's admin API passes its own, with its
    ``security.*`` policy and ``delivery.timeout_s``); without one it makes a native sender
    for each test with ``security`` (default: the daemon's defaults, public addresses only),
    ``proxy_url`` (``delivery.proxy_url``: the egress proxy, None for none) and ``timeout_s``.

    ``region`` and ``regions`` are the daemon's ``region`` and ``[regions]`` (name -> Redis
    URL): ``store`` is that region's Redis, and the others are opened when first needed.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        dlq_retention_s: float = DEFAULT_DLQ_RETENTION_S,
        payload_retention_s: float = DEFAULT_PAYLOAD_RETENTION_S,
        queues: Iterable[str] = (),
        dedup_window_s: int = 0,
        sender: HttpSender | None = None,
        security: SecurityConfig | None = None,
        proxy_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        region: str | None = None,
        regions: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        #: Every region's Redis, this one's (``store``) first; one region without ``regions``.
        self.regions = Regions(store, *_check_regions(region, regions))
        self._sender = sender
        security = security or SecurityConfig()
        self._policy = AddressPolicy(security.allow_private_targets, security.allowed_cidrs)
        if proxy_url is not None:
            Proxy.parse(proxy_url)  # a ValueError now, not at the first test send
        self._proxy_url = proxy_url
        self._channels = Channels()  # the webhooks' TLS contexts, kept across test sends
        self._timeout_s = timeout_s
        self.dedup_window_s = _check_dedup_window(dedup_window_s)
        self.max_payload_bytes = max_payload_bytes
        self.dlq_retention_s = dlq_retention_s
        #: The daemon's jobs.payload_retention_s, which retry_job's 409 names.
        self.payload_retention_s = payload_retention_s
        #: The ``delivery.queues`` of the daemon this client serves (pause/resume know them),
        #: and the task queues, which every daemon serves.
        self.configured_queues = frozenset(queues) | frozenset(TASK_QUEUES)
        self._queues: set[str] = {records.DEFAULT_QUEUE}
        #: Single publishes in flight together go to Redis in one pipeline.
        self._publisher = publishing.Publisher(store, self._queues)

    @classmethod
    def from_url(
        cls,
        redis_url: str,
        prefix: str = "dispatcher",
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        dlq_retention_s: float = DEFAULT_DLQ_RETENTION_S,
        payload_retention_s: float = DEFAULT_PAYLOAD_RETENTION_S,
        queues: Iterable[str] = (),
        dedup_window_s: int = 0,
        security: SecurityConfig | None = None,
        proxy_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        encryption_keys: Sequence[str] = (),
        region: str | None = None,
        regions: Mapping[str, str] | None = None,
    ) -> Client:
        """A client of the Redis at ``redis_url``; ``queues`` is the ``delivery.queues`` of the
        daemon it serves (``pause``/``resume`` know them), as for ``Client(...)``;
        ``dedup_window_s`` the default window of ``publish`` (0: off); ``security`` the
        address policy, ``proxy_url`` the egress proxy and ``timeout_s`` the deadline of
        ``test_webhook``; ``encryption_keys`` the daemon's ``security.encryption_keys`` (base64),
        without which a client of an encrypted deployment can read webhooks but not write or test
        them (``EncryptionKeyMissing``); ``region`` and ``regions`` the daemon's ``region`` and
        ``[regions]``, with ``redis_url`` the URL of ``region``."""
        window = _check_dedup_window(dedup_window_s)  # before a connection pool is made
        _check_regions(region, regions)
        try:
            keyring = Keyring.of(key_list(list(encryption_keys)))
        except BadValueError as bad:
            raise InvalidField("encryption_keys", "; ".join(bad.reasons)) from None
        return cls(
            Store.open(redis_url, prefix=prefix, keyring=keyring),
            max_payload_bytes=max_payload_bytes,
            dlq_retention_s=dlq_retention_s,
            payload_retention_s=payload_retention_s,
            queues=queues,
            dedup_window_s=window,
            security=security,
            proxy_url=proxy_url,
            timeout_s=timeout_s,
            region=region,
            regions=regions,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.regions.close()
        await self.store.close()

    async def dlq_scope(self, webhook_id: str | None = None) -> tuple[str, ...] | None:
        """The regions a queue or DLQ operation acts on, home first: every region, or with
        ``webhook_id`` that webhook's (read from this region's copy of the registry; every
        region when the webhook is not there, deleted say). None without regions."""
        with records.redis_errors():
            await self.store.read_layout()
        self.regions.check()
        home = self.regions.name
        if home is None:
            return None
        if webhook_id is not None:
            try:
                hook = await webhooks.get_webhook(self.store, webhook_id)
            except NotFound:
                return self.regions.names
            return (hook.region or home,)
        return self.regions.names

    async def _everywhere(self) -> list[tuple[Store, str | None]]:
        """Each region's store, home first, with the name for ``reaching`` (None: home)."""
        scope = await self.dlq_scope()
        if scope is None:
            return [(self.store, None)]
        return [await records.region_store(self.regions, name) for name in scope]

    async def ping(self) -> None:
        """Raise ``RedisUnavailable`` unless Redis answers PING."""
        await control.ping(self.store)

    # --- webhooks -------------------------------------------------------------------------

    async def create_webhook(
        self,
        tenant_id: str,
        url: str,
        event_types: tuple[str, ...] | list[str] = ("*",),
        **fields: Any,
    ) -> shapes.WebhookWithSecret:
        """Register a webhook; the answer includes its ``secret`` (generated when absent: a
        ``whsec_`` secret, or with ``signature_scheme="v1a"`` a ``whsk_`` signing key, whose
        ``public_key`` every answer shows)."""
        if not isinstance(event_types, list | tuple):  # list("a.b") would subscribe to "a", ...
            raise InvalidField("event_types", "must be a non-empty list of event types or '*'")
        hook = await webhooks.create_webhook(
            self.store,
            {"tenant_id": tenant_id, "url": url, "event_types": list(event_types), **fields},
        )
        return cast("shapes.WebhookWithSecret", hook.to_wire(with_secret=True))

    async def get_webhook(self, webhook_id: str) -> shapes.Webhook:
        hook = await webhooks.get_webhook(self.store, webhook_id)
        views = await webhooks.webhook_views(self.store, [hook], self.regions)
        return cast("shapes.Webhook", views[0])

    async def list_webhooks(
        self, tenant_id: str | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> shapes.WebhookList:
        """Webhooks as ``GET /v1/webhooks`` lists them.

        With ``tenant_id``: all of the tenant's, by id, in one page (``next_cursor`` None;
        ``limit`` is checked but not applied). Without: a page of every tenant's webhooks in no
        set order, ``{"items", "next_cursor"}`` (None at the end), ``limit`` 1 to 100 a page and
        ``cursor`` the ``next_cursor`` of the page before; a webhook created or deleted while
        paging may be missed or come twice (HSCAN's guarantee).
        """
        if not _is_whole(limit) or not 1 <= limit <= webhooks.MAX_PAGE:
            raise InvalidField("limit", f"must be a whole number from 1 to {webhooks.MAX_PAGE}")
        if tenant_id is not None:
            if cursor is not None:
                raise InvalidField("cursor", "cannot be combined with tenant_id (one page)")
            hooks = await webhooks.list_webhooks(self.store, tenant_id)
            views = await webhooks.webhook_views(self.store, hooks, self.regions)
            return {"items": cast("list[shapes.Webhook]", views), "next_cursor": None}
        if cursor is not None and not webhooks.is_page_cursor(cursor):
            raise InvalidField("cursor", "must be a next_cursor of an earlier page")
        hooks, next_cursor = await webhooks.page_webhooks(self.store, limit=limit, cursor=cursor)
        views = await webhooks.webhook_views(self.store, hooks, self.regions)
        return {"items": cast("list[shapes.Webhook]", views), "next_cursor": next_cursor}

    async def webhook_jobs(self, webhook_id: str, limit: int = 20) -> shapes.WebhookJobs:
        """The webhook's recent delivered and dead jobs, newest first: ``{"items",
        "scanned"}``, found by a bounded read of its shard (``queue/recent.py``: the newest
        2,000 delivered jobs and 500 DLQ entries there, ``scanned`` the records read), so a
        quiet webhook on a busy shard may show none. ``NotFound`` for an unknown webhook."""
        if not _is_whole(limit) or not 1 <= limit <= recent.MAX_LIMIT:
            raise InvalidField("limit", f"must be a whole number from 1 to {recent.MAX_LIMIT}")
        hook = await webhooks.get_webhook(self.store, webhook_id)
        store, remote = await records.region_store(self.regions, hook.region)
        with reaching(remote):
            answer = await recent.recent_jobs(store, webhook_id, limit=limit)
        return cast("shapes.WebhookJobs", answer)

    async def update_webhook(self, webhook_id: str, **changes: Any) -> shapes.Webhook:
        """Change webhook fields; ``enabled=True`` also closes its breaker (a fresh start).
        ``paused=True`` holds its jobs without attempts (new events keep queueing for it);
        ``paused=False`` puts them back in their queues in the order they were accepted."""
        hook = await webhooks.update_webhook(self.store, webhook_id, changes)
        views = await webhooks.webhook_views(self.store, [hook], self.regions)
        return cast("shapes.Webhook", views[0])

    async def delete_webhook(self, webhook_id: str) -> None:
        await webhooks.delete_webhook(self.store, webhook_id)

    async def rotate_secret(
        self, webhook_id: str, grace_s: float = 86_400, signature_scheme: str | None = None
    ) -> shapes.WebhookWithSecret:
        """A new key (a ``whsec_`` secret for ``v1``, a ``whsk_`` signing key for ``v1a``); the
        old one keeps signing for ``grace_s`` seconds.

        ``signature_scheme`` (default: the webhook's own) switches scheme with the same grace:
        during it the header carries both signatures (``v1,... v1a,...``). The answer is the
        webhook with its new ``secret`` (and, for ``v1a``, its new ``public_key``).
        """
        grace_s = _seconds("grace_s", grace_s, MAX_GRACE_S)
        scheme = check_signature_scheme(signature_scheme)
        hook = await webhooks.rotate_secret(self.store, webhook_id, None, grace_s, scheme)
        return cast("shapes.WebhookWithSecret", hook.to_wire(with_secret=True))

    async def webhook_stats(self, webhook_id: str, window: str = "1h") -> shapes.WebhookStats:
        """How the webhook's deliveries went over ``window`` (``1h``, ``24h`` or ``7d``).

        ``{"attempts", "delivered", "failed", "success_rate", "latency_ms", "lag_ms",
        "series"}``: ``failed`` counts attempts that did not deliver (so ``attempts`` is
        ``delivered + failed`` and ``success_rate`` is ``delivered / attempts``, None without
        attempts); ``latency_ms`` is the attempts' durations and ``lag_ms`` the time from
        publish to delivery, each ``{p50, p95, p99}`` within 5% plus 0.05 ms of rounding
        (histogram.py); ``series`` has one ``{t, attempts, delivered, failed, p95_ms}`` per
        minute (1h) or hour (24h, 7d).
        ``InvalidField`` for another window, ``NotFound`` for an unknown webhook.
        """
        if window not in hook_stats.WINDOWS:
            raise InvalidField("window", f"must be one of {', '.join(hook_stats.WINDOWS)}")
        hook = await webhooks.get_webhook(self.store, webhook_id)
        store, remote = await records.region_store(self.regions, hook.region)
        with reaching(remote):
            with records.redis_errors():  # Redis lost here is an outage too (503), not a fault
                clock = await store.refresh_clock()
            answer = await hook_stats.webhook_stats(store, webhook_id, window, clock.now_ms())
        return cast("shapes.WebhookStats", answer)

    async def test_webhook(
        self, webhook_id: str, event_type: str | None = None, payload: Any = None
    ) -> shapes.TestSend:
        """One signed attempt at the webhook now, not queued and not retried (enabled or not).

        The body is ``payload`` as given, or a ``{"type", "timestamp", "data"}`` test event
        of ``event_type`` (default ``webhook.test``); it is sent with a delivery's headers
        under a fresh ``webhook-id`` (``test_...``, the answer's ``message_id``). Returns
        ``{"delivered", "status", "duration_ms", "error", "response_snippet",
        "signature_accepted", "message_id"}``: ``response_snippet`` is at most the first 512
        bytes of the answer, decoded as UTF-8 with replacement (null without an answer);
        ``signature_accepted`` is True for a 2xx, False for another answer, None without one.
        At most one test per webhook a second across every process: ``TooManyRequests``
        beyond that. ``NotFound`` for an unknown webhook, ``InvalidField`` for a bad field.
        """
        hook = await webhooks.get_webhook(self.store, webhook_id)
        with records.redis_errors():
            clock = await self.store.refresh_clock()
        now_ms = clock.now_ms()
        body = testsend.request_body(
            hook.id, event_type, payload, now_ms=now_ms, max_bytes=self.max_payload_bytes
        )
        if not await resend.take_test_slot(self.store, hook.id):
            raise TooManyRequests(
                f"webhook {hook.id} was tested less than a second ago: at most one test a "
                "second per webhook",
                retry_after_s=1,
            )
        return await testsend.attempt(
            hook,
            body,
            now_ms=now_ms,
            sender=self._sender,
            policy=self._policy,
            timeout_s=self._timeout_s,
            proxy_url=self._proxy_url,
            channels=self._channels,
        )

    # --- events ---------------------------------------------------------------------------

    async def publish(  # noqa: PLR0917 - the positional signature is fixed by the contract
        self,
        tenant_id: str,
        event_type: str,
        payload: Any,
        idempotency_key: str | None = None,
        deliver_at: datetime | str | None = None,
        priority: str = "normal",
        *,
        dedup_window_s: int | None = None,
        ordering_key: str | None = None,
    ) -> shapes.PublishAnswer:
        """Fan the event out to every enabled, subscribed webhook of the tenant.

        Returns ``{"event_id", "jobs": [{"id", "webhook_id"}], "matched", "deduplicated"}`` once
        every job is in Redis; ``matched`` is how many webhooks it went to (0: none of the
        tenant's webhooks subscribes to ``event_type``, a typo, say). The same
        ``idempotency_key`` for the tenant within 24 h answers the first answer and enqueues
        nothing, if the request is the same (``event_type``, ``payload``, ``deliver_at``,
        ``priority``); with any other request it raises ``IdempotencyKeyReused``
        (``idempotency_key_reused``) and enqueues nothing.

        Without a key, an event identical to one the tenant published within
        ``dedup_window_s`` seconds (same ``event_type`` and payload as a JSON value; None: the
        client's default, 0: off, at most 86400) answers that event's answer with
        ``"deduplicated": True`` and enqueues nothing (its ``deliver_at`` and ``priority`` are
        the first one's).

        ``ordering_key`` chooses the lane of the event's job for a webhook with ``ordering:
        "fifo"`` (None: the webhook's one keyless lane): a lane's jobs are attempted one at a
        time, in the order their publishes were accepted. Other webhooks ignore it.
        """
        _new, answer = await self.publish_checked(
            tenant_id,
            event_type,
            payload,
            idempotency_key=idempotency_key,
            deliver_at=deliver_at,
            priority=priority,
            dedup_window_s=dedup_window_s,
            ordering_key=ordering_key,
        )
        return answer

    async def publish_checked(
        self,
        tenant_id: str,
        event_type: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        deliver_at: datetime | str | None = None,
        priority: str = "normal",
        webhook_id: str | None = None,
        dedup_window_s: int | None = None,
        ordering_key: str | None = None,
    ) -> tuple[bool, shapes.PublishAnswer]:
        """Like ``publish``, also saying whether the event is new (False: an idempotent repeat
        or a duplicate)."""
        pub = self._publication(
            tenant_id,
            event_type,
            payload,
            idempotency_key,
            deliver_at,
            priority,
            webhook_id,
            dedup_window_s,
            ordering_key,
        )
        new, answer = await self._publisher.publish(pub)
        return new, cast("shapes.PublishAnswer", answer)

    async def deliver(
        self,
        webhook_id: str,
        event_type: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        deliver_at: datetime | str | None = None,
        priority: str = "normal",
        ordering_key: str | None = None,
    ) -> tuple[bool, shapes.PublishAnswer]:
        """One job for exactly this webhook (enabled, whatever it subscribes to).

        Returns (new, answer) like ``publish_checked`` (``matched`` is 1); ``NotFound`` or
        ``Conflict`` (disabled). An idempotency key here is this webhook's own: the same key
        given to another webhook's delivery, or to ``publish``, is another key; reused with
        another request, it raises ``IdempotencyKeyReused`` as in ``publish``. A delivery is
        never deduplicated: it is asked for one webhook on purpose.
        """
        hook = await webhooks.ensure_deliverable(self.store, webhook_id)
        return await self.publish_checked(
            hook.tenant_id,
            event_type,
            payload,
            idempotency_key=idempotency_key,
            deliver_at=deliver_at,
            priority=priority,
            webhook_id=hook.id,
            dedup_window_s=0,
            ordering_key=ordering_key,
        )

    async def publish_many(
        self, events: Iterable[Mapping[str, Any]]
    ) -> list[shapes.PublishAnswer | DispatcherError]:
        """Publish several events in one round trip to Redis.

        Each event is a mapping with ``publish``'s arguments (``tenant_id``, ``event_type``,
        ``payload`` and the optional ones). Every event is checked before anything is sent, so
        bad input raises and enqueues nothing. Each event is then all-or-nothing on its own:
        the answer list holds, in order, the answer of each event (as ``publish`` answers it,
        ``matched`` and ``deduplicated`` included) or the ``DispatcherError`` it met (Redis
        unavailable, out of memory, ``IdempotencyKeyReused``) while others may have been
        accepted. An event identical to an earlier one of the same batch is its duplicate.
        """
        pubs = []
        for event in events:
            unknown = set(event) - _EVENT_FIELDS
            if unknown:
                raise InvalidField(min(unknown), "is not an event field")
            pubs.append(
                self._publication(
                    event.get("tenant_id"),
                    event.get("event_type"),
                    event.get("payload"),
                    event.get("idempotency_key"),
                    event.get("deliver_at"),
                    event.get("priority", "normal"),
                    None,
                    event.get("dedup_window_s"),
                    event.get("ordering_key"),
                )
            )
        answers = await publishing.publish_many(self.store, pubs, self._queues)
        return cast("list[shapes.PublishAnswer | DispatcherError]", answers)

    def _publication(  # noqa: PLR0917 - the fields of one event
        self,
        tenant_id: Any,
        event_type: Any,
        payload: Any,
        idempotency_key: Any,
        deliver_at: Any,
        priority: Any,
        webhook_id: str | None,
        dedup_window_s: Any,
        ordering_key: Any = None,
    ) -> publishing.Publication:
        if priority not in Priority.__members__.values():
            raise InvalidField("priority", "must be one of high, normal, low")
        window = (
            self.dedup_window_s if dedup_window_s is None else _check_dedup_window(dedup_window_s)
        )
        event_id, job_prefix = new_event_ids()
        return publishing.Publication(
            tenant_id=check_tenant_id(tenant_id),
            event_type=check_event_type(event_type),
            payload=self._encode_payload(payload),
            event_id=event_id,
            job_prefix=job_prefix,
            idempotency_key=_check_idempotency_key(idempotency_key),
            deliver_at_ms=_deliver_at_ms(deliver_at),
            priority=priority,
            only_webhook=webhook_id,
            dedup_window_s=window,
            ordering_key=check_ordering_key(ordering_key),
        )

    def _encode_payload(self, payload: Any) -> bytes:
        try:
            body = orjson.dumps(payload)
        except TypeError as exc:
            raise InvalidField("payload", f"must be JSON-serialisable ({exc})") from exc
        if len(body) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload is {len(body)} bytes, over the limit of {self.max_payload_bytes}"
            )
        return body

    # --- jobs -----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> shapes.Job | None:
        """The job as ``GET /v1/jobs/{id}`` shows it, or None for an unknown or malformed id.
        With regions, from the region the id names (a job relayed there but not applied yet is
        not found, for as long as the relay lags)."""
        store, remote = await self._of_job(job_id)
        with reaching(remote):
            job = await records.get_job(store, job_id)
            if job is None:
                return None
            view = await records.job_view(store, job)
        return cast("shapes.Job", view)

    async def _of_job(self, job_id: str) -> tuple[Store, str | None]:
        """The store of the region a job id names, with the name for ``reaching``."""
        region = region_of(job_id) if is_job_id(job_id) else None
        return await records.region_store(self.regions, region)

    async def retry_job(self, job_id: str) -> shapes.Job:
        """Send an existing job again as a new series of attempts, with the same id (its
        ``webhook-id``): attempts reset, its history keeps the earlier ones. A dead job goes
        back as ``replay([job_id])`` puts it; a job scheduled for its next attempt after a
        failure, or a delivered one within ``jobs.payload_retention_s`` of its delivery (its
        payload is kept that long), goes now; all to the end of their queue (a FIFO job to
        the back of its lane). Returns the job as ``get_job`` shows it (queued).

        ``NotFound`` for an unknown or swept job. ``Conflict`` for a job already queued or in
        flight, a delivered job whose payload is no longer kept (the message names
        ``payload_retention_s``, as given to this Client) or whose webhook is deleted or
        disabled, and a job deferred without an attempt (rate limit, max_in_flight, endpoint
        capacity, breaker: it is sent when that frees). ``NotReplayable`` for a dead job that
        cannot go back (payload lost, webhook deleted or disabled).
        """
        store, remote = await self._of_job(job_id)
        with reaching(remote):
            await resend.retry_job(store, job_id, payload_retention_s=self.payload_retention_s)
        job = await self.get_job(job_id)
        if job is None:  # swept at once: only a record past its retention is
            raise NotFound(f"no job {job_id!r}")
        return job

    # --- tasks ----------------------------------------------------------------------------

    async def enqueue_task(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        deliver_at: datetime | str | None = None,
    ) -> shapes.TaskEnqueued:
        """Enqueue one run of the task ``name`` with ``args`` (a JSON object; the task is
        called as ``fn(ctx, **args)``), on ``queue`` (default: the task's own), now or at
        ``deliver_at``. Returns ``{"id", "name", "queue"}``; ``GET /v1/jobs/{id}`` shows the
        run with ``kind: "task"``.

        The name must be registered by a daemon: each daemon writes the names of its tasks
        (``tasks.modules`` and the built-in ones) to Redis at start, so a client in any
        process can check. An unknown name raises ``NotFound`` and enqueues nothing.
        """
        name = check_task_name(name)
        if queue is not None:
            queue = check_task_queue(queue)
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InvalidField("args", "must be a JSON object (the task's keyword arguments)")
        body = self._encode_payload(args)
        found = await queue_tasks.enqueue(
            self.store, name, body, queue=queue, due_ms=_deliver_at_ms(deliver_at)
        )
        if found is None:
            raise NotFound(
                f"no task named {name!r} is registered: a daemon registers the tasks of its "
                "tasks.modules (and the built-in dispatcher.* ones) when it starts"
            )
        job_id, chosen = found
        return {"id": job_id, "name": name, "queue": cast("shapes.TaskQueue", chosen)}

    async def list_tasks(self) -> shapes.TaskList:
        """Every task a daemon registered: ``{"items": [{name, queue, every_s, last_run_at,
        last_status, next_run_at}]}`` (``next_run_at`` null unless periodic)."""
        items: list[shapes.TaskInfo] = [
            {
                "name": t.name,
                "queue": cast("shapes.TaskQueue", t.queue),
                "every_s": t.every_s,
                "last_run_at": rfc3339(t.last_run_ms),
                "last_status": cast("shapes.TaskRunStatus | None", t.last_status),
                "next_run_at": rfc3339(t.next_run_ms),
            }
            for t in await queue_tasks.listing(self.store)
        ]
        return {"items": items}

    # --- dead-letter queue -----------------------------------------------------------------

    async def replay(self, job_ids: list[str]) -> shapes.Replayed:
        """Put dead jobs back in their ready queue (attempts reset, history kept).

        Returns ``{"replayed": n, "not_found": [ids], "not_dead": [ids]}``, as the API does.
        All or nothing: a dead job that cannot go back (its payload was lost, its webhook was
        deleted or is disabled) raises ``NotReplayable`` naming each such job and why, and
        none is replayed. Unknown ids and jobs that are not dead are passed over and named.
        ``job_ids`` is a list of 1 to 1000 (``dlq.MAX_REPLAY_IDS``) strings, else
        ``InvalidField`` (``invalid_field``), as the API's ``{"ids": [...]}``. With regions,
        each job is replayed in the region its id names, every region checked first.
        """
        answer = await dlq_ops.replay(self.store, job_ids, regions=self.regions)
        return cast("shapes.Replayed", answer)

    async def replay_matching(
        self,
        *,
        webhook_id: str | None = None,
        tenant_id: str | None = None,
        since: datetime | str | None = None,
        reason: str | None = None,
        until: datetime | str | None = None,
    ) -> shapes.Replayed:
        """Replay every dead job of the filters (``reason``: the DLQ entry's, as ``list_dlq``
        shows it), dead-lettered at or after ``since`` and before ``until``, page by page to
        the end; jobs that cannot go back (see ``replay``) stay in the DLQ.

        Returns ``{"replayed", "skipped", "skipped_reasons"}`` as the API does (which does one
        page inline and the rest in a background operation with the same counts)."""
        progress = await dlq_ops.replay_matching(
            self.store,
            webhook_id=webhook_id,
            tenant_id=tenant_id,
            since_ms=_time_ms("since", since),
            reason=_check_reason(reason),
            until_ms=_time_ms("until", until),
            regions=self.regions,
            scope=await self.dlq_scope(webhook_id),
        )
        return cast("shapes.Replayed", dlq_ops.replay_answer(progress))

    async def list_dlq(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        webhook_id: str | None = None,
        tenant_id: str | None = None,
        reason: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> shapes.DlqPage:
        """A page of dead jobs, oldest first: ``{"items", "next_cursor"}`` (None at the end).

        ``reason`` keeps the jobs dead for it (``max_attempts``, ``gone``, ...); ``since`` and
        ``until`` keep those dead-lettered at or after, and before, those times.

        With regions, the DLQ of every region in turn, home first (with ``webhook_id``, of its
        region), and ``next_cursor`` names the region it goes on in (``<region>|...``)."""
        if not _is_whole(limit) or limit < 1:
            raise InvalidField("limit", "must be a whole number of at least 1")
        if cursor is not None and not dlq.is_cursor(cursor):
            raise InvalidField("cursor", "must be a next_cursor of an earlier page")
        filters: dict[str, Any] = {
            "webhook_id": webhook_id,
            "tenant_id": tenant_id,
            "reason": _check_reason(reason),
            "since_ms": _time_ms("since", since),
            "until_ms": _time_ms("until", until),
        }
        scope = await self.dlq_scope(webhook_id)
        if scope is None:
            if cursor is not None and "|" in cursor:
                raise InvalidField("cursor", "must be a next_cursor of an earlier page")
            page = await dlq.list_dead(self.store, limit=limit, cursor=cursor, **filters)
        else:
            page = await dlq.list_regions(
                self.regions, scope, limit=limit, cursor=cursor, **filters
            )
        return cast("shapes.DlqPage", page)

    async def inspect_dlq(self, job_id: str) -> shapes.DeadJob:
        """The dead job with its payload; ``NotFound`` unless it is in the DLQ (with regions:
        the DLQ of the region its id names)."""
        store, remote = await self._of_job(job_id)
        with reaching(remote):
            return cast("shapes.DeadJob", await dlq.inspect(store, job_id))

    async def purge_dlq(self, older_than_s: float = 0, *, confirm: bool = False) -> shapes.Purged:
        """Delete the entries older than both ``older_than_s`` and ``dlq_retention_s`` (with
        their records), page by page: ``{"purged", "retention_s", "within_retention"}``
        (entries younger than the retention, which stay), as the API answers.

        Without ``confirm`` nothing is deleted: ``ConfirmationRequired`` says how many would
        go (``would_purge``) and how many the retention keeps, as the API's 409 does.
        With regions, the DLQs of every region, counted and purged together.
        """
        facts = await self.purge_facts(older_than_s)
        if not confirm:
            raise facts.refusal()
        purged = await dlq_ops.purge(self.store, facts.plan, regions=self.regions)
        return cast("shapes.Purged", facts.answer(purged))

    async def purge_facts(self, older_than_s: float = 0) -> dlq_ops.PurgeFacts:
        """What ``purge_dlq(older_than_s)`` deletes and what the retention keeps, counted by
        entry id (no record read)."""
        older_than_s = _seconds("older_than_s", older_than_s, MAX_AGE_S)
        return await dlq_ops.purge_facts(
            self.store,
            older_than_s=older_than_s,
            retention_s=self.dlq_retention_s,
            regions=self.regions,
            scope=await self.dlq_scope(),
        )

    # --- queues and status ----------------------------------------------------------------

    async def pause(self, queue: str) -> shapes.QueuePaused:
        """Stop sending from ``queue`` on every worker within a second; it keeps accepting.

        Returns ``{"queue", "paused": True}``. ``UnknownQueue`` when no worker serves it, no
        webhook names it, it holds no job and it is neither configured nor paused (a typo).
        With regions, in every region (known in any of them).
        """
        queue = check_queue(queue)
        for store, remote in await self._known_everywhere(queue):
            with reaching(remote):
                await control.pause(store, queue)
        return {"queue": queue, "paused": True}

    async def resume(self, queue: str) -> shapes.QueuePaused:
        """Send from ``queue`` again: ``{"queue", "paused": False}``; ``UnknownQueue`` as
        ``pause`` (a paused queue is always known)."""
        queue = check_queue(queue)
        for store, remote in await self._known_everywhere(queue):
            with reaching(remote):
                await control.resume(store, queue)
        return {"queue": queue, "paused": False}

    async def _known_everywhere(self, queue: str) -> list[tuple[Store, str | None]]:
        """Every region's store (as ``_everywhere``) once ``queue`` is known in one of them,
        this region first; else this region's ``UnknownQueue``."""
        try:
            await control.ensure_known(self.store, queue, self.configured_queues)
        except UnknownQueue as unknown:
            places = await self._everywhere()
            for store, remote in places[1:]:
                with reaching(remote):
                    try:
                        await control.ensure_known(store, queue)
                    except UnknownQueue:
                        continue
                return places
            raise unknown from None
        return await self._everywhere()

    async def status(self) -> shapes.StatusCounts:
        """The dashboard of ``GET /v1/status``, but for ``alerts``: those are judged by the
        daemon serving the API, in its memory, so only the API shows them. With regions, also
        ``region`` (this one, whose counts these are) and ``regions``: every region's counts,
        outbox depth and relay lag, or ``reachable: false`` for one that did not answer."""
        answer = cast("shapes.StatusCounts", await queue_status.status(self.store))
        with records.redis_errors():
            await self.store.read_layout()
        self.regions.check()
        home = self.regions.name
        if home is not None:
            answer["region"] = home
            own: shapes.RegionCounts = {  # the counts above: read once
                "reachable": True,
                "queued": answer["queued"],
                "active": answer["active"],
                "scheduled": answer["scheduled"],
                "dlq_size": answer["dlq_size"],
                "paused": answer["paused"],
                "outbox": await queue_status.outbox_counts(self.store),
            }
            answer["regions"] = await queue_status.region_counts(self.regions, home=own)
        return answer

    async def stats(self, window: str = "1h") -> shapes.Stats:
        """The daemon's outcomes per minute over ``window`` (only ``1h``: the counters are
        kept an hour), oldest first and zero-filled: ``{"window", "series": [{"t",
        "delivered", "failed", "dead", "avg_processing_ms"}]}``, as ``GET /v1/stats``."""
        minutes = queue_status.SERIES_WINDOWS.get(window)
        if minutes is None:
            raise InvalidField("window", f"must be one of {', '.join(queue_status.SERIES_WINDOWS)}")
        with records.redis_errors():
            await self.store.refresh_clock()
        series = await queue_status.minute_series(self.store, minutes=minutes)
        return cast("shapes.Stats", {"window": window, "series": series})

    async def gauges(self) -> queue_status.Gauges:
        """The queue counts per known queue and the DLQ's size, as ``/metrics`` shows them."""
        return await queue_status.gauges(self.store)


def _check_idempotency_key(value: object) -> str | None:
    """``value`` is an ``object``: callers of the public API are not always type-checked."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_TEXT:
        raise InvalidField("idempotency_key", f"must be a string of 1 to {MAX_ID_TEXT} characters")
    check_unicode("idempotency_key", value)
    return value


def _check_regions(region: object, regions: object) -> tuple[str | None, dict[str, str]]:
    """``region`` and ``regions`` as config.py checks ``region`` and ``[regions]``: names of the
    form ``ids.REGION_PATTERN``, ``region`` one of ``regions`` when both are given. ``region``
    without ``regions`` is allowed (the others are then unreachable), and ``regions`` without
    ``region`` takes the name the Redis records. Objects: callers are not always type-checked."""
    if region is not None and not is_region_name(region):
        raise InvalidField("region", f"must be a region name ({REGION_PATTERN}), not {region!r}")
    if regions is None:
        return cast("str | None", region), {}
    if not isinstance(regions, Mapping):
        raise InvalidField("regions", "must be a mapping of region names to Redis URLs")
    for name, url in regions.items():
        if not is_region_name(name):
            raise InvalidField("regions", f"{name!r} is not a region name ({REGION_PATTERN})")
        try:
            region_url(Raw(url, "the Client's regions", from_env=False))
        except BadValueError as bad:
            raise InvalidField("regions", f"{name}: {'; '.join(bad.reasons)}") from None
    if regions and region is not None and region not in regions:
        raise InvalidField("region", f"{region!r} is not in regions ({', '.join(regions)})")
    return cast("str | None", region), dict(regions)


def _check_dedup_window(value: object) -> int:
    """``value`` is an ``object``: callers of the public API are not always type-checked."""
    most = publishing.MAX_DEDUP_WINDOW_S
    if not _is_whole(value) or not 0 <= cast("int", value) <= most:
        raise InvalidField("dedup_window_s", f"must be a whole number of seconds from 0 to {most}")
    return cast("int", value)


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(name: str, value: object, most: float) -> float:
    """``value`` is an ``object``: callers of the public API are not always type-checked."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= most:
        raise InvalidField(name, f"must be a number of seconds from 0 to {most:g}")
    return float(value)


def _deliver_at_ms(deliver_at: object) -> int | None:
    return _time_ms("deliver_at", deliver_at)


def _check_reason(value: object) -> str | None:
    """A DLQ reason filter: a short string (any: an unknown reason matches nothing)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_TEXT:
        raise InvalidField("reason", f"must be a string of 1 to {MAX_ID_TEXT} characters")
    return value


def _time_ms(name: str, value: object) -> int | None:
    return time_ms(name, value)
