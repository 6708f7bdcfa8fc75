"""Operator controls and worker bookkeeping: paused queues, heartbeats, per-minute counters.

Workers read the ``paused`` set a few times a second and skip the queues in it; they write a
heartbeat into the ``workers`` hash and flush their delivery counters into ``stats:<minute>``
hashes, from which ``status.py`` computes the dashboard without scanning any job.
"""

from __future__ import annotations

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
#: Webhook records one call of the one-time backfill reads (index_queues.lua, a few ms).
INDEX_PAGE = 500


async def ensure_known(store: Store, queue: str, configured: Iterable[str] = ()) -> None:
    """Raise ``UnknownQueue`` unless ``queue`` is known, so a typo is not a silent no-op.

    Known: ``default``, ``configured`` (the ``delivery.queues`` of the daemon asking), the
    queues of the workers' heartbeats and the paused ones (as ``GET /v1/status`` lists them),
    those a webhook names (each shard's ``queues`` set), and any that holds jobs (its ready
    stream or delayed zset exists). Webhooks written before the ``queues`` set existed are
    added to it once per shard, the first time a queue is not found (``index_queues.lua``).
    """
    if queue == DEFAULT_QUEUE or queue in configured or queue in await _controlled(store):
        return
    with redis_errors():
        shards = await store.all_shards()
        for shard in shards:
            if await _named(shard, queue) or await _holds_jobs(shard, queue):
                return
        for shard in shards:
            if await _index_queues(shard) and await _named(shard, queue):
                return
    known = await _some_known(store, shards, configured)
    listed = ", ".join(known[:MOST_LISTED]) + (" (and more)" if len(known) > MOST_LISTED else "")
    raise UnknownQueue(
        f"no queue {queue!r}: no worker serves it, no webhook names it, it holds no job, and "
        f"it is neither paused nor in delivery.queues; known queues: {listed}",
        known=known[:MOST_LISTED],
    )


async def _controlled(store: Store) -> set[str]:
    """The paused queues and those of the workers' heartbeats."""
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


async def _index_queues(shard: Store) -> bool:
    """Add the queues of webhooks written before the ``queues`` set existed, once per shard;
    True when this call did it (False: done before)."""
    if await shard.redis.exists(shard.keys.queues_indexed):
        return False
    keys = [shard.keys.webhooks, shard.keys.queues, shard.keys.queues_indexed]
    cursor: bytes | str = "0"
    while True:
        cursor = await shard.scripts.index_queues(keys=keys, args=[cursor, INDEX_PAGE])
        if cursor in {b"0", "0"}:
            return True


async def _some_known(store: Store, shards: list[Store], configured: Iterable[str]) -> list[str]:
    """Known queue names, sorted, from a bounded read (one page of each shard's set)."""
    names = {DEFAULT_QUEUE, *configured} | await _controlled(store)
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
