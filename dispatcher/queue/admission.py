"""The cluster-wide limits a user sets on a webhook: ``rate_limit`` and ``max_in_flight``.

Both live in Redis so every worker process shares them (``admit.lua``): the rate limit as
GCRA theoretical arrival times per webhook, the in-flight cap as a zset of leases that expire
when their holder dies. Only webhooks that set a limit cost this round trip, once per claimed
batch; the others never reach it.

Each job takes one rate slot, once: a job put back with a slot reserved for it
(``Job.reserved_ms``) keeps that slot until its attempt, whatever else makes it wait (a late
claim, ``max_in_flight``, the process's own cap on the webhook), so a backlog drains at the
webhook's rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from dispatcher.queue.keys import GROUP

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dispatcher.model import Job, Webhook
    from dispatcher.queue.store import Store
    from dispatcher.queue.streams import Claim

HORIZON_MS = 60_000  # rate slots are reserved at most this far ahead
#: A job that holds a slot goes while the sends are at most this far ahead of the rate: the
#: jitter of promoting and claiming it never holds it back, and jobs that all come back late
#: go at most this much of the rate's worth at once (then at the rate).
PACE_SLACK_MS = 1_000
LEASE_MARGIN_S = 5.0


class Admission(IntEnum):
    """What ``admit.lua`` answers for one job (its numbers are the script's)."""

    ADMITTED = 0
    RESERVED = 1  # rate limited; it holds a slot and goes again at `due_ms`
    RATE_LIMITED = 2  # rate limited beyond the horizon; try again at `due_ms`
    IN_FLIGHT_FULL = 3
    NO_ROOM = 4  # the calling process has no room for the webhook now (it took nothing)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Admission
    due_ms: int


def limited(hook: Webhook) -> bool:
    return hook.rate_limit is not None or hook.max_in_flight is not None


def holds_slot(job: Job) -> bool:
    """Whether the job comes back holding a rate slot reserved for it (late or not)."""
    return job.reserved_ms is not None


async def admit(
    store: Store,
    batch: list[tuple[Job, Webhook]],
    *,
    attempt_timeout_s: float,
    room: Mapping[str, int] | None = None,
    free: int | None = None,
    holder: str = "",
) -> tuple[int, list[Decision]]:
    """Decide each job of ``batch`` (jobs of limited webhooks); returns (Redis ms, decisions).

    ``room``: how many attempts the calling process may start now per webhook id, and
    ``free`` in all (its free lanes); unbounded when not given. A job beyond them is
    ``NO_ROOM`` and takes neither a rate slot nor a lease. ``holder``: the calling worker's
    consumer name, which holds the leases taken (``lease_member``).
    """
    by_hook: dict[str, list[int]] = {}
    hooks: dict[str, Webhook] = {}
    for i, (_job, hook) in enumerate(batch):
        by_hook.setdefault(hook.id, []).append(i)
        hooks[hook.id] = hook
    unbounded = len(batch)
    keys = [store.keys.rates]
    args: list[str | int | float] = [
        int((attempt_timeout_s + LEASE_MARGIN_S) * 1000),
        HORIZON_MS,
        PACE_SLACK_MS,
        unbounded if free is None else free,
        holder,
    ]
    order: list[int] = []
    for webhook_id, indexes in by_hook.items():
        hook = hooks[webhook_id]
        rate = hook.rate_limit or {}
        lease_index = 0
        if hook.max_in_flight is not None:
            keys.append(store.keys.lease(webhook_id))
            lease_index = len(keys)
        args += [
            webhook_id,
            rate.get("per_second", 0),
            rate.get("burst", 1),
            hook.max_in_flight or 0,
            lease_index,
            unbounded if room is None else room.get(webhook_id, unbounded),
            len(indexes),
        ]
        for i in indexes:
            args += [batch[i][0].id, 1 if holds_slot(batch[i][0]) else 0]
        order += indexes
    reply = await store.scripts.admit(keys=keys, args=args)
    decisions: list[Decision | None] = [None] * len(batch)
    for n, i in enumerate(order):
        decisions[i] = Decision(Admission(int(reply[1 + 2 * n])), int(reply[2 + 2 * n]))
    return int(reply[0]), [d for d in decisions if d is not None]


def lease_member(job_id: str, holder: str) -> str:
    """A lease's member in its webhook's lease zset: the job and the worker holding it."""
    return f"{job_id}|{holder}"


async def start_lease(
    store: Store,
    hook: Webhook,
    job_id: str,
    *,
    holder: str,
    attempt_timeout_s: float,
    claim: Claim | None = None,
) -> bool:
    """A lane starts the attempt of a job admitted under ``max_in_flight``: its lease now runs
    from here (``lease.lua``), so it measures the attempt and not the wait for a lane. False
    when the lease ran out meanwhile and the webhook's in-flight cap is full again, or when
    ``claim`` (the job's claim by ``holder``) is stale: the job must not go now."""
    keys = [store.keys.lease(hook.id)]
    args: list[str | int] = [
        lease_member(job_id, holder),
        int((attempt_timeout_s + LEASE_MARGIN_S) * 1000),
        hook.max_in_flight or 0,
    ]
    if claim is not None:
        keys.append(store.keys.ready(claim.queue))
        args += [GROUP, claim.sid, claim.token, holder]
    return bool(await store.scripts.lease(keys=keys, args=args))
