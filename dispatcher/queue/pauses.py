"""Paused webhooks: their jobs are held in Redis, without attempts, until they are resumed.

A claimed job of a paused webhook (the gate reads the webhook record with every claim, so a
pause is seen by every process at its next claim) is settled as held, fenced by its claim like
any outcome; ``settle.lua`` holds it only if the webhook is still paused as it writes, else the
job is due again at once. A job never attempted keeps the form of a queued job (lua/_held.lua):
its entry moves, same id, less the webhook id, to the webhook's held stream ``W|S`` (one per
ready stream S), and the locator in the jobs hash names it; so it costs what it cost queued.
Any other (a retry claimed while paused, a job that waited for room) is held as a record and a
member of the webhook's held zset (``Keys.held``), as the release before this one held every
job. Both sort by when the publish was accepted. New events keep queueing for a paused
webhook, and are held as they are claimed.

Resuming (``PATCH {"paused": false}``) marks the webhook ``draining``; ``drain`` (every
worker, about once a second, up to ``DRAIN_CALLS`` batches of ``RELEASE_BATCH``) puts its held
jobs back at the end of their queues, oldest first across its held zset and streams, in the
webhook's shard (``pause_release.lua``); not the resume itself, so a hold being written as it
resumes is in place by then. Disabling puts back a first batch at once; ``drain`` also puts
back the held jobs of a webhook disabled or deleted meanwhile (the gate then dead-letters
them). While it drains, its gate holds its other jobs that never went through a gate (new
events, and those queued while paused but not yet claimed), so they take their place in
accepted order behind the backlog instead of overtaking it; jobs put back say so (``wr``
``paused``) and pass. Once none is held at two release calls in a row, and each ready stream
has been claimed past the last job put back in it before (so none queued ahead of them is
left ungated), the mark goes and the webhook's jobs go straight out again. Back in their
queue they go out within the webhook's ``rate_limit`` and ``max_in_flight`` as any job.
Order is kept within a ready stream (a queue and priority); each priority's jobs go back to
their own stream.
What the tick costs does not grow with the webhooks that stay paused: it walks the webhooks
named in ``Keys.releasing`` (a resume, a disable or a delete adds its webhook, so does a hold
while it drains; it leaves once paused again or drained), and, as a safety net, reads the
records of about ``SCAN_BATCH`` more members of the holders sets a call, from a cursor kept
across calls, so a webhook resumed without being named there (its process died between the
two writes; a release before this one resumed it) is found within (holders / SCAN_BATCH)
calls.
A pause is apart from the breaker: jobs parked behind an open breaker stay parked (and come
back to be held once it closes, if the webhook is still paused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from dispatcher.ids import sid_ms
from dispatcher.queue.codec import HELD_SEP
from dispatcher.queue.keys import GROUP
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from dispatcher.queue.store import Store

RELEASE_BATCH = 1_000  # held jobs put back per call, all webhooks together
DRAIN_CALLS = 10  # release calls per tick at most (pauses.drain)
SCAN_BATCH = 100  # holders members the safety net of each release call looks at (about)


@dataclass(frozen=True, slots=True)
class Held:
    """The held jobs of every shard: how many, per webhook, and the oldest's creation (ms)."""

    jobs: int
    by_webhook: dict[str, int]
    oldest_ms: int | None


async def release(
    store: Store, webhook_ids: tuple[str, ...] = (), *, batch: int | None = None
) -> list[tuple[str, int]]:
    """Put back the held jobs (at most ``batch``, default ``RELEASE_BATCH``) of these webhooks
    of ``store``'s shard (none: every webhook with held jobs there) that are no longer paused;
    returns (webhook id, jobs put back)."""
    keys = store.keys
    released = await store.scripts.pause_release(
        keys=[
            *(keys.holders, keys.webhooks, keys.jobs, keys.dlq, keys.held_streams),
            *(keys.releasing, keys.holders_scan, keys.queues),
        ],
        args=[
            *(keys.base, RELEASE_BATCH if batch is None else batch, GROUP, SCAN_BATCH),
            *webhook_ids,
        ],
    )
    return [(released[i].decode(), int(released[i + 1])) for i in range(0, len(released), 2)]


async def resume(store: Store, webhook_id: str, *, put_back: bool = True) -> int:
    """After a webhook was resumed or disabled: its first held jobs go back now, the tick does
    the rest. Without ``put_back`` (a resume) the tick puts back them all, in its next second:
    a job a gate held just before the resume, still being written, is held by then and goes
    back in its place rather than after newer ones; this call only drops the drain mark when
    nothing is held."""
    with redis_errors():
        released = await release(
            store.of_webhook(webhook_id), (webhook_id,), batch=None if put_back else 0
        )
    return sum(n for _, n in released)


async def to_release(store: Store, webhook_id: str) -> None:
    """After a webhook was disabled or deleted: the tick puts back its held jobs (if any), to
    be dead-lettered by its gate (it walks only the webhooks so named, and a few of the
    others a call as a safety net)."""
    store = store.of_webhook(webhook_id)
    with redis_errors():
        await store.redis.sadd(store.keys.releasing, webhook_id)


async def tick(store: Store) -> list[tuple[str, int]]:
    """Release the held jobs of this shard's webhooks no longer paused (one call)."""
    return await release(store)


async def drain(store: Store) -> list[tuple[str, int]]:
    """The tick of every worker (about once a second): release calls while each puts back a
    whole batch, at most ``DRAIN_CALLS``, so a resumed backlog drains faster than new events
    of the webhook arrive (they wait behind it until then) while no call blocks Redis long."""
    released: list[tuple[str, int]] = []
    for _ in range(DRAIN_CALLS):
        done = await tick(store)
        released += done
        if sum(n for _, n in done) < RELEASE_BATCH:
            break
    return released


async def held(store: Store) -> Held:
    """The held jobs of every shard (for ``GET /v1/status`` and the backlog alerts): two round
    trips per shard, whatever the number of jobs."""
    jobs, oldest = 0, None
    by_webhook: dict[str, int] = {}
    with redis_errors():
        for shard in await store.all_shards():
            keys = shard.keys
            members = await cast(
                "Awaitable[set[bytes]]", shard.redis.sunion([keys.holders, keys.held_streams])
            )
            holders = sorted(b.decode() for b in members)
            if not holders:
                continue
            pipe = shard.redis.pipeline(transaction=False)
            for member in holders:
                if HELD_SEP in member:  # a held stream: its first entry id is its oldest's
                    pipe.xlen(keys.ready(member))
                    pipe.xrange(keys.ready(member), count=1)
                else:  # a held zset (the full form)
                    pipe.zcard(keys.held(member))
                    pipe.zrange(keys.held(member), 0, 0, withscores=True)
            replies = await pipe.execute()
            for member, count, first in zip(holders, replies[::2], replies[1::2], strict=True):
                webhook_id = member.partition(HELD_SEP)[0]
                if count:
                    jobs += int(count)
                    by_webhook[webhook_id] = by_webhook.get(webhook_id, 0) + int(count)
                if first:
                    ms = (
                        sid_ms(first[0][0].decode())
                        if HELD_SEP in member
                        else int(cast("float", first[0][1])) // 1000
                    )
                    oldest = ms if oldest is None else min(oldest, ms)
    return Held(jobs, by_webhook, oldest)
