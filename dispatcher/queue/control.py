"""Operator controls and worker bookkeeping: paused queues, heartbeats, per-minute counters.

Workers read the ``paused`` set a few times a second and skip the queues in it; they write a
heartbeat into the ``workers`` hash and flush their delivery counters into ``stats:<minute>``
hashes, from which ``status.py`` computes the dashboard without scanning any job.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import orjson

from dispatcher.errors import UnknownQueue
from dispatcher.queue.keys import streams_of
from dispatcher.queue.records import DEFAULT_QUEUE, redis_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Mapping

    from dispatcher.queue.store import Store

STATS_TTL_S = 3600
HEARTBEAT_INTERVAL_S = 2.0
#: A heartbeat older than this many intervals belongs to a worker that is gone.
HEARTBEAT_MISSES = 3
#: Entries of workers silent this long are removed when a worker starts.
FORGET_AFTER_S = 3600


def minute_of(now_ms: int) -> int:
    return now_ms // 60_000


async def ping(store: Store) -> None:
    with redis_errors():
        await store.redis.ping()


# --- pause ----------------------------------------------------------------------------------


async def pause(store: Store, queue: str) -> None:
    with redis_errors():
        await store.redis.sadd(store.keys.paused, queue)


async def resume(store: Store, queue: str) -> None:
    with redis_errors():
        await store.redis.srem(store.keys.paused, queue)


async def paused_queues(store: Store) -> set[str]:
    with redis_errors():
        members = await cast("Awaitable[set[bytes]]", store.redis.smembers(store.keys.paused))
    return {m.decode() for m in members}


# --- known queues ---------------------------------------------------------------------------

#: Queue names an ``UnknownQueue`` error lists at most.
MOST_LISTED = 20
#: Webhook records one call of the backfill reads (index_queues.lua, about 4 ms).
INDEX_PAGE = 500
#: Backfill pages one request reads at most, over all shards: 10 000 webhook records, about
#: 0.1 s (100 000 webhooks are indexed over 10 refusals); the next request goes on from there.
INDEX_BUDGET = 20
#: How long a finished backfill is trusted: the first miss after this scans again, for what
#: the count of webhooks cannot show (an older release changing a webhook's queue).
INDEXED_TTL_MS = 15 * 60_000
#: How long an unfinished backfill's cursor is kept for the next request to go on from.
SCAN_TTL_MS = 3_600_000
#: How long the backfill lock is held at most (a holder that dies frees it after this).
INDEX_LOCK_MS = 10_000


@dataclass(frozen=True, slots=True)
class _Index:
    """A shard's index of the queues its webhooks name: complete, or read so far of total."""

    complete: bool
    read: int = 0
    total: int = 0


async def ensure_known(store: Store, queue: str, configured: Iterable[str] = ()) -> None:
    """Raise ``UnknownQueue`` unless ``queue`` is known, so a typo is not a silent no-op.

    Known: ``default``, ``configured`` (the ``delivery.queues`` of the daemon asking), the
    queues of the workers' heartbeats and the paused ones (as ``GET /v1/status`` lists them),
    those a webhook names (each shard's ``queues`` set), and any that holds jobs (its ready
    stream or delayed zset exists). Webhooks an older release wrote (before the ``queues`` set
    existed, or during a rolling upgrade) are added to it by a backfill scan on a miss, when
    the shard's count of covered webhooks is not its number of webhooks (or is older than
    ``INDEXED_TTL_MS``): one process at a time (a lock), at most ``INDEX_BUDGET`` pages per
    request, the cursor kept in Redis; while it is unfinished, the 404 says so.
    """
    if queue == DEFAULT_QUEUE or queue in configured or queue in await controlled_queues(store):
        return
    unfinished: list[_Index] = []
    with redis_errors():
        shards = await store.all_shards()
        for shard in shards:
            if await _named(shard, queue) or await _holds_jobs(shard, queue):
                return
        budget = INDEX_BUDGET
        for shard in shards:
            index, used = await _index_queues(shard, budget)
            budget -= used
            # Pages read by this request or another one may have added it.
            if (not index.complete or used) and await _named(shard, queue):
                return
            if not index.complete:
                unfinished.append(index)
    known = await _some_known(store, shards, configured)
    listed = ", ".join(known[:MOST_LISTED]) + (" (and more)" if len(known) > MOST_LISTED else "")
    building = ""
    if unfinished:
        read = sum(i.read for i in unfinished)
        total = sum(i.total for i in unfinished)
        building = (
            f" (the index of the queues webhooks name is still being built: {read} of "
            f"{total} webhooks read; if a webhook names {queue!r}, try again shortly)"
        )
    raise UnknownQueue(
        f"no queue {queue!r}: no worker serves it, no webhook names it, it holds no job, and "
        f"it is neither paused nor in delivery.queues{building}; known queues: {listed}",
        known=known[:MOST_LISTED],
    )


async def controlled_queues(store: Store) -> set[str]:
    """The paused queues and those the workers' heartbeats say they serve."""
    with redis_errors():
        beats = await live_beats(store, max_age_ms=None)
    names = await paused_queues(store)
    for beat in beats.values():
        served = beat.get("queues")
        if isinstance(served, list):
            names.update(q for q in served if isinstance(q, str))
    return names


async def _named(shard: Store, queue: str) -> bool:
    return bool(await cast("Awaitable[int]", shard.redis.sismember(shard.keys.queues, queue)))


async def _holds_jobs(shard: Store, queue: str) -> bool:
    keys = shard.keys
    names = [k for s in streams_of(queue) for k in (keys.ready(s), keys.delayed(s))]
    return bool(await shard.redis.exists(*names))


async def _index_queues(shard: Store, budget: int) -> tuple[_Index, int]:
    """Bring the shard's ``queues`` set up to date with its webhooks, reading at most
    ``budget`` pages: (the index as it now is, pages read).

    The ``queues:indexed`` marker counts the webhooks the set covers (the backfill sets it to
    the hash's length; each create adds one, each delete takes one): equal to the hash's
    length, the set is complete and nothing is read. Else the process that takes the lock
    scans on from the stored cursor; the others (the lock is taken) answer with the set as it
    is.
    """
    keys = shard.keys
    pipe = shard.redis.pipeline(transaction=False)
    pipe.get(keys.queues_indexed)
    pipe.pttl(keys.queues_indexed)
    pipe.hlen(keys.webhooks)
    pipe.get(keys.queues_scan)
    marker, ttl_ms, total, scan = await pipe.execute()
    if total == 0 or (marker is not None and int(marker) == total):
        if marker is not None and ttl_ms == -1:  # set by a create: trust it as long as a scan
            await shard.redis.pexpire(keys.queues_indexed, INDEXED_TTL_MS)
        return _Index(complete=True), 0
    read = int(scan.split(b" ")[1]) if scan else 0
    token = secrets.token_hex(8)
    if budget <= 0 or not await shard.redis.set(keys.queues_lock, token, nx=True, px=INDEX_LOCK_MS):
        return _Index(complete=False, read=read, total=total), 0
    script_keys = [keys.webhooks, keys.queues, keys.queues_indexed, keys.queues_scan]
    for page in range(1, budget + 1):
        last = "1" if page == budget else "0"
        raw_state, now_read, total = await shard.scripts.index_queues(
            keys=[*script_keys, keys.queues_lock],
            args=[token, INDEX_PAGE, INDEXED_TTL_MS, SCAN_TTL_MS, last],
        )
        state = raw_state.decode() if isinstance(raw_state, bytes) else raw_state
        if state == "done":
            return _Index(complete=True), page
        if state != "more":  # "lost": the lock expired and another process took it
            return _Index(complete=False, read=read, total=total), page - 1
        read = now_read
    return _Index(complete=False, read=read, total=total), budget


async def _some_known(store: Store, shards: list[Store], configured: Iterable[str]) -> list[str]:
    """Known queue names, sorted, from a bounded read (one page of each shard's set)."""
    names = {DEFAULT_QUEUE, *configured} | await controlled_queues(store)
    with redis_errors():
        for shard in shards:
            _cursor, page = await cast(
                "Awaitable[tuple[int, list[bytes]]]",
                shard.redis.sscan(shard.keys.queues, 0, count=MOST_LISTED * 5),
            )
            names.update(m.decode() for m in page)
    return sorted(names)


# --- heartbeats -----------------------------------------------------------------------------


async def heartbeat(store: Store, consumer: str, beat: Mapping[str, object]) -> None:
    """Record that ``consumer`` is alive; ``beat`` is {host, pid, started_at_ms, ...}."""
    record = orjson.dumps({**beat, "seen_ms": store.clock.now_ms()})
    await store.redis.hset(store.keys.workers, mapping={consumer: record})


async def forget_worker(store: Store, consumer: str) -> None:
    await store.redis.hdel(store.keys.workers, consumer)


async def forget_silent_workers(store: Store) -> int:
    """Remove the heartbeats of workers silent for an hour (killed, not stopped)."""
    cutoff_ms = store.clock.now_ms() - FORGET_AFTER_S * 1000
    beats = await live_beats(store, max_age_ms=None)
    stale = [c for c, beat in beats.items() if _int(beat.get("seen_ms")) < cutoff_ms]
    if stale:
        await store.redis.hdel(store.keys.workers, *stale)
    return len(stale)


async def live_beats(store: Store, *, max_age_ms: int | None) -> dict[str, dict[str, object]]:
    """The heartbeats by consumer; with ``max_age_ms``, only those seen that recently."""
    raw = await cast("Awaitable[dict[bytes, bytes]]", store.redis.hgetall(store.keys.workers))
    now_ms = store.clock.now_ms()
    beats: dict[str, dict[str, object]] = {}
    for consumer, record in raw.items():
        try:
            beat = orjson.loads(record)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(beat, dict):
            continue
        seen = beat.get("seen_ms")
        if max_age_ms is not None and (not isinstance(seen, int) or now_ms - seen > max_age_ms):
            continue
        beats[consumer.decode()] = beat
    return beats


# --- per-minute counters ---------------------------------------------------------------------


async def flush_stats(store: Store, counts: Mapping[int, Mapping[str, int]]) -> None:
    """Add a worker's counters to the shared ``stats:<minute>`` hashes, in one round trip."""
    pipe = store.redis.pipeline(transaction=False)
    for minute, fields in counts.items():
        key = store.keys.stats(minute)
        for name, value in fields.items():
            if value:
                pipe.hincrby(key, name, value)
        pipe.expire(key, STATS_TTL_S)
    await pipe.execute()


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
