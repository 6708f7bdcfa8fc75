"""The cluster-wide limits a user sets on a webhook: ``rate_limit`` and ``max_in_flight``.

Both live in Redis so every worker process shares them (``admit.lua``): the rate limit as a
GCRA theoretical arrival time per webhook, the in-flight cap as a zset of leases that expire
when their holder dies. Only webhooks that set a limit cost this round trip, once per claimed
batch; the others never reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.model import Job, Webhook
    from dispatcher.queue.store import Store

HORIZON_MS = 60_000  # rate slots are reserved at most this far ahead
RESERVED_LATE_MS = 1_000  # a job claimed this late after its reserved slot takes a new one
LEASE_MARGIN_S = 5.0


class Verdict(IntEnum):
    ADMITTED = 0
    RESERVED = 1  # rate limited; a slot is reserved for it at `due_ms`
    RATE_LIMITED = 2  # rate limited beyond the horizon; try again at `due_ms`
    IN_FLIGHT_FULL = 3


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    due_ms: int


def limited(hook: Webhook) -> bool:
    return hook.rate_limit is not None or hook.max_in_flight is not None


def holds_slot(job: Job, now_ms: int) -> bool:
    """Whether the job comes back for a rate slot reserved for it (and on time)."""
    slot = job.reserved_ms
    return slot is not None and now_ms - RESERVED_LATE_MS <= slot <= now_ms + 500


async def admit(
    store: Store, batch: list[tuple[Job, Webhook]], *, attempt_timeout_s: float
) -> tuple[int, list[Decision]]:
    """Decide each job of ``batch`` (jobs of limited webhooks); returns (Redis ms, decisions)."""
    by_hook: dict[str, list[int]] = {}
    hooks: dict[str, Webhook] = {}
    for i, (_job, hook) in enumerate(batch):
        by_hook.setdefault(hook.id, []).append(i)
        hooks[hook.id] = hook
    now_ms = store.clock.now_ms()
    keys = [store.keys.rates]
    args: list[str | int | float] = [int((attempt_timeout_s + LEASE_MARGIN_S) * 1000), HORIZON_MS]
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
            len(indexes),
        ]
        for i in indexes:
            job = batch[i][0]
            args += [job.id, 1 if holds_slot(job, now_ms) else 0]
        order += indexes
    reply = await store.scripts.admit(keys=keys, args=args)
    decisions: list[Decision | None] = [None] * len(batch)
    for n, i in enumerate(order):
        decisions[i] = Decision(Verdict(int(reply[1 + 2 * n])), int(reply[2 + 2 * n]))
    return int(reply[0]), [d for d in decisions if d is not None]
