"""The dashboard: queue counts, recent outcomes, paused queues, Redis facts, live workers.

Every number comes from a counter Redis keeps anyway, so a status costs a handful of
commands whatever the number of jobs: the ready stream holds only unfinished entries (queued
plus claimed), the consumer group's PEL counts the claimed ones, the delayed zset the
scheduled ones, and workers add their outcomes to per-minute ``stats:<minute>`` hashes (as
publishes do the duplicates they answer).

With ``[regions]`` (docs/regions.md): each outbox's depth is its ``XLEN`` (relayed entries are
deleted) and its lag the age of its first entry; ``region_counts`` reads every region's counts,
each under a second, so a region that is cut off shows as unreachable instead of stalling the
answer. Without regions nothing of this is read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis.exceptions as rex
from redis.asyncio.cluster import RedisCluster

from dispatcher.errors import DispatcherError
from dispatcher.ids import TASK_QUEUES, sid_ms
from dispatcher.model import rfc3339
from dispatcher.queue import breakers, control, dlq, ordering, pauses, waiting
from dispatcher.queue.keys import GROUP, PRIORITIES, streams_of
from dispatcher.queue.records import DEFAULT_QUEUE, redis_errors
from dispatcher.queue.regions import reaching

if TYPE_CHECKING:
    from dispatcher.queue.connection import Cluster
    from dispatcher.queue.ordering import Ordering
    from dispatcher.queue.pauses import Held
    from dispatcher.queue.regions import Regions
    from dispatcher.queue.store import Store
    from dispatcher.shapes import OutboxCounts, RegionCounts

RECENT_WINDOW_S = 300
#: How long ``region_counts`` waits for each region before showing it unreachable.
REGION_TIMEOUT_S = 1.0
_REDIS_FACTS = (
    "redis_version",
    "role",
    "used_memory",
    "used_memory_human",
    "maxmemory",
    "maxmemory_policy",
    "connected_clients",
    "uptime_in_seconds",
)


@dataclass(frozen=True, slots=True)
class QueueCounts:
    queue: str
    queued: int
    active: int
    scheduled: int


async def known_queues(store: Store) -> list[str]:
    """``default``, the queues live workers serve, and the paused ones."""
    return sorted({DEFAULT_QUEUE} | await control.controlled_queues(store))


async def queue_counts(store: Store, queues: list[str]) -> list[QueueCounts]:
    """Queued, active and scheduled per queue (its priority streams and shards summed), in one
    round trip."""
    with redis_errors():
        shards = await store.all_shards()
    pipe = store.redis.pipeline(transaction=False)
    for queue in queues:
        for shard in shards:
            for stream in streams_of(queue):
                pipe.xlen(shard.keys.ready(stream))
                pipe.xpending(shard.keys.ready(stream), GROUP)
                pipe.zcard(shard.keys.delayed(stream))
    with redis_errors():
        replies = await pipe.execute(raise_on_error=False)
    counts = []
    per_queue = 3 * len(PRIORITIES) * len(shards)
    for i, queue in enumerate(queues):
        queued = active = scheduled = 0
        mine = replies[per_queue * i : per_queue * (i + 1)]
        for length, pending, delayed in zip(mine[::3], mine[1::3], mine[2::3], strict=True):
            for reply in (length, delayed):
                if isinstance(reply, Exception):
                    raise reply
            # NOGROUP: no worker has read this stream yet, so nothing of it is claimed.
            claimed = 0 if isinstance(pending, rex.ResponseError) else int(pending["pending"])
            queued += max(int(length) - claimed, 0)
            active += claimed
            scheduled += int(delayed)
        counts.append(QueueCounts(queue, queued, active, scheduled))
    return counts


@dataclass(frozen=True, slots=True)
class Gauges:
    """What ``/metrics`` shows of the queues: the counts of every known queue, the DLQ's size."""

    counts: list[QueueCounts]
    dlq_size: int


async def gauges(store: Store) -> Gauges:
    """The queue gauges, read at scrape time: a few round trips whatever the number of jobs."""
    counts = await queue_counts(store, await known_queues(store))
    return Gauges(counts, await dlq.dlq_size(store))


async def recent_stats(store: Store, *, window_s: int = RECENT_WINDOW_S) -> dict[str, int]:
    """The workers' counters summed over the minutes of the window (this one included), and
    the publishes answered as duplicates (``publish.lua`` counts them)."""
    now_minute = control.minute_of(store.clock.now_ms())
    pipe = store.redis.pipeline(transaction=False)
    for minute in range(now_minute - window_s // 60 + 1, now_minute + 1):
        pipe.hgetall(store.keys.stats(minute))
    with redis_errors():
        replies = await pipe.execute()
    totals = {"delivered": 0, "failed": 0, "dead": 0, "ms_sum": 0, "deduplicated": 0}
    for reply in cast("list[dict[bytes, bytes]]", replies):
        for name, value in reply.items():
            key = name.decode()
            if key in totals:
                totals[key] += int(value)
    return totals


#: The one window of ``minute_series`` (``GET /v1/stats``): the stats hashes live an hour.
SERIES_WINDOWS = {"1h": control.STATS_TTL_S // 60}


async def minute_series(store: Store, *, minutes: int = 60) -> list[dict[str, Any]]:
    """The workers' counters per minute, oldest first, the current minute last, zero-filled:
    ``{"t", "delivered", "failed", "dead", "avg_processing_ms"}`` each (the average over that
    minute's attempts, None without any). One pipeline of ``minutes`` HGETALLs of small hashes."""
    now_minute = control.minute_of(store.clock.now_ms())
    first = now_minute - minutes + 1
    pipe = store.redis.pipeline(transaction=False)
    for minute in range(first, now_minute + 1):
        pipe.hgetall(store.keys.stats(minute))
    with redis_errors():
        replies = cast("list[dict[bytes, bytes]]", await pipe.execute())
    series = []
    for minute, reply in zip(range(first, now_minute + 1), replies, strict=True):
        counts = {name.decode(): int(value) for name, value in reply.items()}
        attempts = counts.get("delivered", 0) + counts.get("failed", 0)
        series.append(
            {
                "t": rfc3339(minute * 60_000),
                "delivered": counts.get("delivered", 0),
                "failed": counts.get("failed", 0),
                "dead": counts.get("dead", 0),
                "avg_processing_ms": (
                    round(counts.get("ms_sum", 0) / attempts, 1) if attempts else None
                ),
            }
        )
    return series


async def redis_facts(store: Store) -> dict[str, Any]:
    """INFO of the server that holds dispatcher's keys, and how it is reached (``mode``).

    On a Redis Cluster that is the primary owning dispatcher's hash slot (``node``); ``nodes``
    then lists every node with its role and memory, since INFO is per node.
    """
    with redis_errors():
        layout = await store.read_layout()
    shards = {"shards": layout.shards, "served_shards": layout.served}
    if store.cluster is not None:
        return {**await _cluster_facts(store, store.cluster), **shards}
    with redis_errors():
        info = await store.redis.info()
    return {**{name: info.get(name) for name in _REDIS_FACTS}, "mode": store.mode, **shards}


async def _cluster_facts(store: Store, cluster: Cluster) -> dict[str, Any]:
    with redis_errors():
        home = (await cluster.home_node()).name
        infos = cast(
            "dict[str, dict[str, Any]]", await cluster.info(target_nodes=RedisCluster.ALL_NODES)
        )
        holders = set()
        for shard in await store.all_shards():
            node = cluster.get_node_from_key(shard.keys.jobs)
            if node is not None:
                holders.add(node.name)
    nodes = [
        {
            "node": name,
            "role": info.get("role"),
            "used_memory": info.get("used_memory"),
            "used_memory_human": info.get("used_memory_human"),
            "maxmemory_policy": info.get("maxmemory_policy"),
            "holds_keys": name in holders,
        }
        for name, info in sorted(infos.items())
    ]
    mine = infos.get(home, {})
    return {
        **{name: mine.get(name) for name in _REDIS_FACTS},
        "mode": store.mode,
        "node": home,
        "nodes": nodes,
    }


async def live_workers(store: Store) -> list[dict[str, Any]]:
    max_age_ms = int(control.HEARTBEAT_INTERVAL_S * control.HEARTBEAT_MISSES * 1000)
    with redis_errors():
        beats = await control.live_beats(store, max_age_ms=max_age_ms)
    return [
        {
            "id": consumer,
            "host": beat.get("host"),
            "pid": beat.get("pid"),
            "started_at": _time(beat.get("started_at_ms")),
            "in_flight": beat.get("in_flight"),
            "queues": beat.get("queues"),
            "last_seen_at": _time(beat.get("seen_ms")),
        }
        for consumer, beat in sorted(beats.items())
    ]


def _time(value: object) -> str | None:
    return rfc3339(value) if isinstance(value, int) else None


async def breaker_summary(store: Store) -> dict[str, Any]:
    with redis_errors():
        return await breakers.summary(store)


@dataclass(frozen=True, slots=True)
class _Summary:
    """What the status and each region's counts show, read concurrently."""

    counts: list[QueueCounts]
    paused: list[str]
    dlq_size: int
    tripped: dict[str, Any]  # breakers.summary
    waiting: int  # held back by a webhook's limits
    held: Held  # held for paused webhooks
    behind: Ordering  # behind a FIFO lane's head

    @property
    def scheduled(self) -> int:
        """Not ready yet: delayed, parked behind a breaker, waiting for room, held, behind."""
        delayed = sum(c.scheduled for c in self.counts)
        parked = int(self.tripped["parked"])
        return delayed + parked + self.waiting + self.held.jobs + self.behind.jobs


async def _summary(store: Store) -> _Summary:
    """The known queues and the task queues (every daemon serves them), and what is not ready."""
    queues = sorted({*await known_queues(store), *TASK_QUEUES})
    (counts, paused, dlq_size), (tripped, waiting_total, held, behind) = await asyncio.gather(
        asyncio.gather(
            queue_counts(store, queues), control.paused_queues(store), dlq.dlq_size(store)
        ),
        asyncio.gather(
            breaker_summary(store),
            _waiting_total(store),
            pauses.held(store),
            ordering.waiting(store),
        ),
    )
    return _Summary(counts, sorted(paused), dlq_size, tripped, waiting_total, held, behind)


async def _waiting_total(store: Store) -> int:
    with redis_errors():
        return await waiting.total(store)


async def status(store: Store, *, window_s: int = RECENT_WINDOW_S) -> dict[str, Any]:
    """The answer of ``GET /v1/status`` and ``Client.status()``: the known queues and the task
    queues (every daemon serves them)."""
    summary = await _summary(store)
    counts, paused = summary.counts, summary.paused
    stats = await recent_stats(store, window_s=window_s)
    attempts = stats["delivered"] + stats["failed"]
    return {
        "queued": sum(c.queued for c in counts),
        "active": sum(c.active for c in counts),
        "scheduled": summary.scheduled,
        "dlq_size": summary.dlq_size,
        "failed_recent": {"window_s": window_s, "count": stats["failed"]},
        "delivered_recent": {"window_s": window_s, "count": stats["delivered"]},
        "dead_recent": {"window_s": window_s, "count": stats["dead"]},
        "deduplicated_recent": {"window_s": window_s, "count": stats["deduplicated"]},
        "avg_processing_ms": round(stats["ms_sum"] / attempts, 1) if attempts else None,
        "paused": paused,
        "paused_jobs": summary.held.jobs,
        "ordering_jobs": summary.behind.jobs,
        "queues": [
            {
                "name": c.queue,
                "queued": c.queued,
                "active": c.active,
                "scheduled": c.scheduled,
                "paused": c.queue in paused,
            }
            for c in counts
        ],
        "redis": await redis_facts(store),
        "workers": await live_workers(store),
        "breakers": summary.tripped,
    }


# --- regions (docs/regions.md) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outbox:
    """One outbox of this Redis: the jobs published here for another region, not relayed yet."""

    depth: int
    oldest_ms: int | None  # when its oldest entry was written (Redis time); None: empty


async def outboxes(store: Store) -> dict[str, Outbox]:
    """Every outbox of this Redis, by destination region (every shard summed): those of
    ``layout.regions`` and of any region a publish here wrote for (``keys.outboxes``: one
    removed from ``[regions]`` still shows, though nothing relays it), in two round trips;
    without regions ``{}`` and no Redis call (the layout is cached)."""
    with redis_errors():
        layout = await store.read_layout()
        if layout.region is None:
            return {}
        shards = await store.all_shards()
        pipe = store.redis.pipeline(transaction=False)
        for shard in shards:
            pipe.smembers(shard.keys.outboxes)
        named = {m.decode() for members in await pipe.execute() for m in members}
        others = sorted((set(layout.regions) | named) - {layout.region})
        if not others:
            return {}
        pipe = store.redis.pipeline(transaction=False)
        for region in others:
            for shard in shards:
                pipe.xlen(shard.keys.outbox(region))
                pipe.xrange(shard.keys.outbox(region), count=1)
        replies = await pipe.execute()
    found = {}
    per_region = 2 * len(shards)
    for i, region in enumerate(others):
        mine = replies[per_region * i : per_region * (i + 1)]
        firsts = [sid_ms(first[0][0].decode()) for first in mine[1::2] if first]
        found[region] = Outbox(sum(int(n) for n in mine[::2]), min(firsts, default=None))
    return found


async def outbox_counts(store: Store) -> dict[str, OutboxCounts]:
    """``{destination: {depth, lag_ms}}`` for ``GET /v1/status``: ``lag_ms`` is how long the
    oldest entry has waited (None when empty), by this Redis's clock."""
    found = await outboxes(store)
    if not found:
        return {}
    with redis_errors():
        now_ms = (await store.refresh_clock()).now_ms()
    return {
        region: {
            "depth": outbox.depth,
            "lag_ms": None if outbox.oldest_ms is None else max(now_ms - outbox.oldest_ms, 0),
        }
        for region, outbox in found.items()
    }


async def region_counts(
    regions: Regions, *, home: RegionCounts | None = None
) -> dict[str, RegionCounts]:
    """Every region's counts, home first, read concurrently from each region's Redis; one that
    does not answer within ``REGION_TIMEOUT_S`` shows ``reachable: false`` and why. ``home``:
    the home region's, already read by the caller (``status``), not read again."""

    async def counts(name: str) -> RegionCounts:
        if home is not None and regions.is_home(name):
            return home
        return await _region_counts(regions, name)

    names = regions.names
    found = await asyncio.gather(*(counts(name) for name in names))
    return dict(zip(names, found, strict=True))


async def _region_counts(regions: Regions, region: str) -> RegionCounts:
    try:
        async with asyncio.timeout(REGION_TIMEOUT_S):
            with reaching(None if regions.is_home(region) else region):
                store = regions.store(region)
                summary, outbox = await asyncio.gather(_summary(store), outbox_counts(store))
    except TimeoutError:
        return {"reachable": False, "error": f"no answer within {REGION_TIMEOUT_S:g} s"}
    except (DispatcherError, rex.RedisError, OSError) as exc:
        why = exc.__cause__ or exc  # what the Redis said, not only that the region failed
        return {"reachable": False, "error": str(why) or type(why).__name__}
    return {
        "reachable": True,
        "queued": sum(c.queued for c in summary.counts),
        "active": sum(c.active for c in summary.counts),
        "scheduled": summary.scheduled,
        "dlq_size": summary.dlq_size,
        "paused": summary.paused,
        "outbox": outbox,
    }
