"""Jobs waiting for room: a webhook's ``max_in_flight`` is full, a process's share of the
endpoint (traffic.py) is, or its ``rate_limit`` has no slot left within the horizon.

Such a job waits in its webhook's waiting set (``Keys.waiting``) without an attempt, and comes
back to the end of its queue when room frees: as each attempt of the webhook ends, the settle
that writes its outcome puts the oldest waiting job(s) back (``settle.lua``). So a backlog
behind a small limit costs Redis work in proportion to the jobs released, not to the backlog,
however long it is. ``tick`` (every worker, about once a second) covers room that frees
otherwise: a lease that expired with its dead holder, rate slots coming within the horizon, a
webhook deleted or disabled (its jobs go back to be dead-lettered), or a webhook whose
releasers are gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from dispatcher.queue import admission

if TYPE_CHECKING:
    from dispatcher.queue.store import Store

RELEASE_BATCH = 500  # waiting jobs one tick puts back per webhook, at most
IDLE_MS = 5_000  # a webhook without max_in_flight whose jobs nobody released for this long
KICK = 32  # gets this many back, whose attempts then release the others as they end


async def tick(store: Store) -> list[tuple[str, int]]:
    """Release what room freed without an attempt ending; returns (webhook id, jobs released)."""
    keys = store.keys
    released = await store.scripts.waiting_tick(
        keys=[keys.waiters, keys.webhooks, keys.jobs, keys.dlq, keys.rates],
        args=[keys.base, RELEASE_BATCH, IDLE_MS, KICK, admission.HORIZON_MS],
    )
    return [(released[i].decode(), int(released[i + 1])) for i in range(0, len(released), 2)]


async def count(store: Store, webhook_id: str) -> int:
    """How many of the webhook's jobs wait for room."""
    shard = store.of_webhook(webhook_id)
    found: int = await shard.redis.zcard(shard.keys.waiting(webhook_id))
    return found


async def total(store: Store) -> int:
    """How many jobs wait for room, in every shard (for ``GET /v1/status``)."""
    found = 0
    for shard in await store.all_shards():
        webhook_ids = cast("list[bytes]", await shard.redis.zrange(shard.keys.waiters, 0, -1))
        if webhook_ids:
            pipe = shard.redis.pipeline(transaction=False)
            for webhook_id in webhook_ids:
                pipe.zcard(shard.keys.waiting(webhook_id.decode()))
            found += sum(int(n) for n in await pipe.execute())
    return found
