"""The gate: what becomes of each claimed job before any attempt is made.

For each claim, in order: its record and webhook are loaded; a job whose webhook is gone or
disabled is dead-lettered; a paused webhook's job is held (pauses.py); a webhook whose sealed
secrets no configured key opens (crypto.py) makes it wait, unattempted, for the key; a webhook's
open breaker parks it (a half-open one lets one probe through); the cluster-wide limits
(``rate_limit``, ``max_in_flight``) admit it or make it wait; and this process's adaptive
share of the endpoint (traffic.py) sends it now or makes it wait for room. The one decision
per job is carried out by the worker's ``Actions`` (delivery.py): send, park, hold, wait, wait
for room, dead-letter, quarantine.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import structlog

from dispatcher.crypto import kid_of
from dispatcher.model import Job, Webhook
from dispatcher.queue import admission, breakers, streams
from dispatcher.queue.admission import Admission
from dispatcher.queue.breakers import Breaker
from dispatcher.queue.streams import Claim, MalformedEntry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from dispatcher.config import DeliveryConfig
    from dispatcher.crypto import Keyring
    from dispatcher.health import HealthWatch
    from dispatcher.queue.store import Store
    from dispatcher.traffic import Pool

log = structlog.get_logger()

#: How long a job of a webhook whose secrets no configured key opens waits before it is tried
#: again (nothing is sent meanwhile), and how often each such webhook is logged.
UNDECRYPTABLE_WAIT_MS = 60_000


@dataclass(slots=True)  # not frozen: made once or twice per job, and never changed
class Work:
    """A claimed job on its way to an attempt."""

    claim: Claim
    job: Job
    webhook: Webhook
    leased: bool = False  # holds an in-flight lease of the webhook's max_in_flight
    admitted_at: float = 0.0  # monotonic time the lease was taken


@dataclass(frozen=True, slots=True)
class Actions:
    """How the worker carries out each decision (delivery.py)."""

    send: Callable[[Work], None]  # hand it to the lanes
    park: Callable[[Work, Breaker], None]  # until its breaker closes
    hold: Callable[[Work], None]  # while its webhook is paused
    wait: Callable[[Work, int, str, int | None], None]  # due_ms, reason, reserved_ms
    wait_for_room: Callable[[Work, str, int | None], None]  # reason, reserved_ms
    dead: Callable[[Claim, Job, Webhook | None], None]  # webhook gone or disabled
    quarantine: Callable[[Store, str, list[MalformedEntry]], Awaitable[None]]  # unreadable


class Gate:
    """Turns claims into decisions: breaker, then rate limit and in-flight, then endpoint share."""

    def __init__(
        self,
        pool: Pool,
        health: HealthWatch,
        actions: Actions,
        *,
        cfg: Callable[[], DeliveryConfig],
        busy: Callable[[], int],
        consumer: str,
    ) -> None:
        self.pool = pool
        self.health = health
        self.act = actions
        self.cfg = cfg  # read at each use: a reload changes it
        self.busy = busy  # jobs claimed and not yet attempted to the end
        self.consumer = consumer
        self._undecryptable_logged: dict[str, float] = {}  # webhook id -> monotonic time

    async def start(self, shard: Store, claims: list[Claim]) -> None:
        """Load the claimed jobs, their webhooks and breakers; then each job is sent (handed
        to the lanes), waits in Redis without spending an attempt (its webhook's breaker is
        open, or it is over one of its webhook's limits), or is dead-lettered (its webhook
        is gone or disabled)."""
        loaded = await streams.load(shard, claims)
        broken: defaultdict[str, list[MalformedEntry]] = defaultdict(list)  # by stream
        keyring = shard.keyring
        webhooks = {wid: _decode_webhook(raw, keyring) for wid, raw in loaded.webhooks.items()}
        states = {wid: Breaker.decode(raw) for wid, raw in loaded.breakers.items()}
        self.health.loaded(
            loaded.webhooks, (wid for wid, b in states.items() if b is not None), loaded.failing
        )
        candidates: list[Work] = []
        for claim, job in zip(claims, loaded.jobs, strict=True):
            if job is None:  # its record is gone or unreadable
                raw = orjson.dumps({"j": claim.job_id, "w": claim.webhook_id})
                broken[claim.queue].append(MalformedEntry(claim.sid, raw))
                continue
            hook = webhooks.get(claim.webhook_id)
            if hook is None or not hook.enabled:
                self.act.dead(claim, job, hook)
                continue
            if hook.paused or (hook.draining and job.waiting is None and not job.attempt):
                # resumed, its held jobs going back: a job not yet through the gate waits
                # behind them, so the backlog goes out in accepted order (pauses.py)
                self.act.hold(Work(claim, job, hook))
                continue
            if hook.sealed is not None:  # its secrets are sealed with a key not configured
                self._undecryptable(Work(claim, job, hook), shard)
                continue
            breaker = states.get(hook.id)
            if breaker is not None and not await self._may_pass(shard, breaker, hook.id, job.id):
                self.act.park(Work(claim, job, hook), breaker)
                continue
            candidates.append(Work(claim, job, hook))
        for stream, entries in broken.items():
            await self.act.quarantine(shard, stream, entries)
        placed, others = await self._admit(shard, candidates)
        now = time.monotonic()
        for work in placed:  # admitted within this process's room for their webhooks
            self.pool.endpoint(work.webhook.id).begin(work.job.id, now)
            self.act.send(work)
        for work in self._within_endpoint_limits(others):
            self.act.send(work)

    def _undecryptable(self, work: Work, shard: Store) -> None:
        """Wait without an attempt (not fail: an operator's missing key must not trip
        breakers or dead-letter jobs); logged once a minute per webhook."""
        hook_id = work.webhook.id
        now = time.monotonic()
        if now - self._undecryptable_logged.get(hook_id, float("-inf")) >= 60:  # noqa: PLR2004
            if len(self._undecryptable_logged) > 10_000:  # noqa: PLR2004 - bounded
                self._undecryptable_logged.clear()
            self._undecryptable_logged[hook_id] = now
            log.error(
                "webhook.undecryptable",
                webhook_id=hook_id,
                key_id=kid_of(work.webhook.sealed or ""),
                configured=list(shard.keyring.kids) if shard.keyring else [],
                fix="configure the key in security.encryption_keys",
            )
        due_ms = shard.clock.now_ms() + UNDECRYPTABLE_WAIT_MS
        self.act.wait(work, due_ms, "undecryptable", work.job.reserved_ms)

    async def _may_pass(self, shard: Store, breaker: Breaker, webhook_id: str, job_id: str) -> bool:
        if breaker.holds(job_id):
            return False
        if breaker.state == breakers.HALF_OPEN:
            # The probe: its outcome is reported as soon as it is known. With no probe chosen
            # yet, the first job to ask becomes it.
            if breaker.probe == "" and not await breakers.take_probe(shard, webhook_id, job_id):
                return False
            self.health.probes.add(job_id)
        return True

    def _within_endpoint_limits(self, candidates: list[Work]) -> list[Work]:
        """Apply the adaptive per-endpoint cap of this process (traffic.py) to jobs of
        webhooks without cluster-wide limits (``_admit`` applies it to the others), no round
        trip."""
        now = time.monotonic()
        room: dict[str, int] = {}
        admitted = []
        free = self.cfg().concurrency - self.busy()
        for work in candidates:
            endpoint = self.pool.endpoint(work.webhook.id)
            left = room.get(work.webhook.id)
            if left is None:
                left = endpoint.room(now)
            if left > 0 and (free > self.pool.reserve or not endpoint.slow):
                endpoint.begin(work.job.id, now)
                admitted.append(work)
                free -= 1
            else:
                self.act.wait_for_room(work, "endpoint_capacity", None)
            room[work.webhook.id] = left - 1
        return admitted

    def _room_for(self, works: list[Work], now: float) -> dict[str, int]:
        """How many attempts this process may start now for each webhook of ``works``: its
        adaptive cap (traffic.py), and never the reserved last lanes for a slow endpoint."""
        free = self.cfg().concurrency - self.busy()
        room: dict[str, int] = {}
        for work in works:
            if work.webhook.id not in room:
                endpoint = self.pool.endpoint(work.webhook.id)
                left = endpoint.room(now)
                room[work.webhook.id] = (
                    min(left, free - self.pool.reserve) if endpoint.slow else left
                )
        return room

    async def _admit(self, shard: Store, works: list[Work]) -> tuple[list[Work], list[Work]]:
        """The cluster-wide limits (rate_limit, max_in_flight) for jobs of webhooks that set
        them, in one round trip, together with this process's room for those webhooks, so a
        job takes a rate slot or a lease only when it can go. Returns the jobs of limited
        webhooks that go now, and the jobs of the others; the rest wait in Redis, each
        keeping the rate slot it holds."""
        limited = [w for w in works if admission.limited(w.webhook)]
        if not limited:
            return [], works
        cfg = self.cfg()
        _now, decisions = await admission.admit(
            shard,
            [(w.job, w.webhook) for w in limited],
            attempt_timeout_s=cfg.timeout_s,
            room=self._room_for(limited, time.monotonic()),
            free=cfg.concurrency - self.busy(),
            holder=self.consumer,
        )
        placed = []
        for work, decision in zip(limited, decisions, strict=True):
            held = work.job.reserved_ms
            if decision.verdict is Admission.ADMITTED:
                leased = work.webhook.max_in_flight is not None
                placed.append(Work(work.claim, work.job, work.webhook, leased, time.monotonic()))
            elif decision.verdict in (Admission.IN_FLIGHT_FULL, Admission.NO_ROOM):
                reason = (
                    "max_in_flight"
                    if decision.verdict is Admission.IN_FLIGHT_FULL
                    else "endpoint_capacity"
                )
                self.act.wait_for_room(work, reason, held)
            elif decision.verdict is Admission.RESERVED:
                self.act.wait(work, decision.due_ms, "rate_limit", decision.due_ms)
            else:  # no slot within the horizon: it waits for the tick to see slots free
                self.act.wait_for_room(work, "rate_limit", None)
        return placed, [w for w in works if not admission.limited(w.webhook)]


def _decode_webhook(raw: bytes | None, keyring: Keyring | None) -> Webhook | None:
    if raw is None:
        return None
    try:
        return Webhook.decode(raw, keyring)
    except (ValueError, TypeError):
        log.exception("webhook.malformed")
        return None
