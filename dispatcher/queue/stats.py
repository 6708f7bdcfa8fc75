"""Per-webhook delivery stats in Redis: minutes flushed by workers, rolled into hours, read.

Workers count each attempt in memory (``tally.py``) and their upkeep adds the counts here each
second (``add``: one script call per shard, never on the delivery path) into the webhook's
minute hash ``wstats:m:W:M`` (kept ``MINUTE_TTL_S``), and marks the minute pending.
``rollup`` adds pending minutes, once they are ``ROLL_AFTER_MINUTES`` old, into the hour hash
``wstats:h:W:H`` (kept ``HOUR_TTL_S``): idempotent and safe to run concurrently (each minute
is marked rolled in the same script), at most ``ROLL_BUDGET`` minutes per call, shared by
the shards. It is meant to run every ``ROLLUP_EVERY_S`` as the analytics queue's periodic task.
Counts that reach a minute after it was rolled go to its hour too (``stats_add.lua``).

``webhook_stats`` answers ``GET /v1/webhooks/{id}/stats``: a 1 h window reads the last 60
minutes, 24 h and 7 d the last 24 or 168 hours (the current one included), adding the minutes
not rolled yet to their hour, so the answer never waits for the rollup. All keys of one
answer are read in one script (``stats_read.lua``), so a rollup running meanwhile is seen
wholly or not at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from dispatcher import histogram, tally
from dispatcher.model import rfc3339
from dispatcher.queue.control import minute_of
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from dispatcher.queue.store import Store

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
#: How long a webhook's minute counts are kept (the 1 h window, and time for the rollup).
MINUTE_TTL_S = 2 * 3600
#: How long hour counts are kept: the 7 d window, and its oldest hour whole.
HOUR_TTL_S = 7 * 86_400 + 3600
#: A minute is rolled into its hour once it is this many minutes old (workers flush each second).
ROLL_AFTER_MINUTES = 2
#: Minutes one script call of ``rollup`` rolls at most.
ROLL_BATCH = 500
#: Minutes one ``rollup`` call rolls at most, over all shards (bounded work per run).
ROLL_BUDGET = 20 * ROLL_BATCH
#: How often ``rollup`` should run (any period well under MINUTE_TTL_S is correct).
ROLLUP_EVERY_S = 60.0
#: Groups (one webhook's minute) one ``add`` script call writes at most.
ADD_BATCH = 500
ROLLED = "r"
#: window -> (points, ms per point)
WINDOWS: dict[str, tuple[int, int]] = {
    "1h": (60, MINUTE_MS),
    "24h": (24, HOUR_MS),
    "7d": (168, HOUR_MS),
}


# --- writing ---------------------------------------------------------------------------------


async def add(store: Store, counts: tally.Counts, now_ms: int) -> None:
    """Add a worker's counts (minute -> webhook -> field -> count) to Redis.

    Each webhook's counts go to its own shard, in script calls of at most ``ADD_BATCH``
    minutes. What was written is removed from ``counts``: after an error it holds what was not.
    """
    oldest = minute_of(now_ms) - MINUTE_TTL_S // 60
    groups: dict[int, list[tuple[int, str]]] = {}
    for minute, hooks in counts.items():
        for webhook_id in hooks:
            groups.setdefault(store.of_webhook(webhook_id).keys.shard, []).append(
                (minute, webhook_id)
            )
    for number, members in groups.items():
        shard = store.shard(number)
        for start in range(0, len(members), ADD_BATCH):
            batch = members[start : start + ADD_BATCH]
            keys = [shard.keys.hook_pending]
            args: list[Any] = [MINUTE_TTL_S, HOUR_TTL_S, oldest]
            for minute, webhook_id in batch:
                fields = counts[minute][webhook_id]
                keys += [
                    shard.keys.hook_minute(webhook_id, minute),
                    shard.keys.hook_hour(webhook_id, minute // 60),
                ]
                written = [(name, value) for name, value in fields.items() if value]
                args += [f"{webhook_id}:{minute}", minute, len(written)]
                for name, value in written:
                    args += [name, value]
            # Redis errors go through as they are: upkeep's loop tells an outage from a fault
            await shard.scripts.stats_add(keys=keys, args=args)
            for minute, webhook_id in batch:
                del counts[minute][webhook_id]
                if not counts[minute]:
                    del counts[minute]


async def rollup(store: Store, now_ms: int, *, budget: int = ROLL_BUDGET) -> int:
    """Roll the minutes at least ``ROLL_AFTER_MINUTES`` old into their hours, at most
    ``budget`` of them; returns how many pending minutes it handled (``budget``: more wait).

    Idempotent and safe to run twice or concurrently: a minute is added to its hour and marked
    rolled in one script. Meant to run every ``ROLLUP_EVERY_S`` (the analytics queue's periodic
    task); until it runs the API adds the pending minutes itself.
    """
    cutoff = minute_of(now_ms) - ROLL_AFTER_MINUTES
    handled = 0
    with redis_errors():
        # in rounds, the budget shared by the shards with more: a busy shard cannot keep
        # another's minutes waiting until they expire
        active = await store.all_shards()
        while active and handled < budget:
            share = min(ROLL_BATCH, max(1, (budget - handled) // len(active)))
            more = []
            for shard in active:
                wanted = min(share, budget - handled)
                if wanted <= 0:
                    break
                members = await _pending(shard, cutoff, wanted)
                if members:
                    await _roll(shard, members)
                    handled += len(members)
                if len(members) == wanted:
                    more.append(shard)  # the shard may have more
            active = more
    return handled


async def _roll(shard: Store, members: list[bytes]) -> None:
    """Roll the shard's pending minutes ``members`` (``W:M``) into their hours."""
    keys = [shard.keys.hook_pending]
    for member in members:
        webhook_id, _, minute_text = member.decode().rpartition(":")
        minute = int(minute_text)
        keys += [
            shard.keys.hook_minute(webhook_id, minute),
            shard.keys.hook_hour(webhook_id, minute // 60),
        ]
    await shard.scripts.stats_roll(keys=keys, args=[HOUR_TTL_S, *members])


async def _pending(shard: Store, cutoff: int, count: int) -> list[bytes]:
    """The first ``count`` pending minutes of the shard up to minute ``cutoff``."""
    found = await shard.redis.zrangebyscore(
        shard.keys.hook_pending, "-inf", cutoff, start=0, num=count
    )
    return cast("list[bytes]", found)


# --- reading ---------------------------------------------------------------------------------


async def webhook_stats(store: Store, webhook_id: str, window: str, now_ms: int) -> dict[str, Any]:
    """The answer of ``GET /v1/webhooks/{id}/stats?window=`` (``window`` is one of WINDOWS)."""
    points = await _points(store, webhook_id, window, now_ms)
    latency: dict[int, int] = {}
    lag: dict[int, int] = {}
    totals = dict.fromkeys((tally.ATTEMPTS, tally.DELIVERED, tally.FAILED), 0)
    series = []
    for start_ms, counts in points:
        point_latency = _histogram(counts, tally.LATENCY)
        histogram.merge(latency, point_latency)
        histogram.merge(lag, _histogram(counts, tally.LAG))
        for name in totals:
            totals[name] += counts.get(name, 0)
        [p95] = histogram.percentiles(point_latency, (0.95,))
        series.append(
            {
                "t": rfc3339(start_ms),
                "attempts": counts.get(tally.ATTEMPTS, 0),
                "delivered": counts.get(tally.DELIVERED, 0),
                "failed": counts.get(tally.FAILED, 0),
                "p95_ms": p95,
            }
        )
    attempts = totals[tally.ATTEMPTS]
    return {
        "webhook_id": webhook_id,
        "window": window,
        "attempts": attempts,
        "delivered": totals[tally.DELIVERED],
        "failed": totals[tally.FAILED],
        "success_rate": round(totals[tally.DELIVERED] / attempts, 4) if attempts else None,
        "latency_ms": _quantiles(latency),
        "lag_ms": _quantiles(lag),
        "series": series,
    }


async def _points(
    store: Store, webhook_id: str, window: str, now_ms: int
) -> list[tuple[int, dict[str, int]]]:
    """(start ms, counts) of each point of the window, oldest first."""
    shard = store.of_webhook(webhook_id)
    keys = shard.keys
    count, step_ms = WINDOWS[window]
    last = now_ms // step_ms
    first = last - count + 1
    if step_ms == MINUTE_MS:
        names = [keys.hook_minute(webhook_id, m) for m in range(first, last + 1)]
    else:
        # the minutes still kept: those not rolled yet count in their hour here
        minutes = range(minute_of(now_ms) - MINUTE_TTL_S // 60 + 1, minute_of(now_ms) + 1)
        names = [keys.hook_hour(webhook_id, h) for h in range(first, last + 1)]
        names += [keys.hook_minute(webhook_id, m) for m in minutes]
    unrolled_from = count + 1 if step_ms == HOUR_MS else len(names) + 1  # 1-based, in Lua
    with redis_errors():
        replies = await shard.scripts.stats_read(keys=names, args=[unrolled_from])
    hashes = [_counts(reply) for reply in replies]
    points = [((first + i) * step_ms, hashes[i]) for i in range(count)]
    if step_ms == HOUR_MS:
        for minute, counts in zip(minutes, hashes[count:], strict=True):
            at = minute // 60 - first
            if ROLLED not in counts and 0 <= at < count:
                merged = points[at][1]
                for name, value in counts.items():
                    merged[name] = merged.get(name, 0) + value
    return points


def _counts(reply: list[bytes]) -> dict[str, int]:
    return {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}


def _histogram(counts: dict[str, int], kind: str) -> dict[int, int]:
    return {
        int(name[1:]): value
        for name, value in counts.items()
        if name[0] == kind and name[1:].isdigit()
    }


def _quantiles(counts: dict[int, int]) -> dict[str, float | None]:
    p50, p95, p99 = histogram.percentiles(counts)
    return {"p50": p50, "p95": p95, "p99": p99}
