"""Operator controls and worker bookkeeping: paused queues, heartbeats, per-minute counters.

Workers read the ``paused`` set a few times a second and skip the queues in it; they write a
heartbeat into the ``workers`` hash and flush their delivery counters into ``stats:<minute>``
hashes, from which ``status.py`` computes the dashboard without scanning any job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import orjson

from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping

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
