"""The FIFO lanes' bookkeeping as the status and the backlog alerts read it: how many jobs
wait behind a lane's head, and since when the oldest head holds its lane.

``_lane.lua`` keeps both in each shard as lanes change (``Keys.lanes_waiting``: webhook id ->
its jobs behind a head; ``Keys.lane_since``: each head -> since when its lane waits for it), so
reading them costs one round trip per shard, in proportion to the FIFO webhooks with waiting
jobs, never to the jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from dispatcher.queue.store import Store


@dataclass(frozen=True, slots=True)
class Ordering:
    """Every shard's jobs behind a FIFO lane's head: how many, per webhook, and since when
    (ms, Redis clock) the oldest head holds its lane (None: no lane)."""

    jobs: int
    by_webhook: dict[str, int]
    oldest_head_ms: int | None


async def waiting(store: Store) -> Ordering:
    """The jobs waiting behind FIFO lanes' heads, in every shard."""
    jobs, by_webhook, oldest = 0, {}, None
    with redis_errors():
        shards = await store.all_shards()
        for shard in shards:
            pipe = shard.redis.pipeline(transaction=False)
            pipe.hgetall(shard.keys.lanes_waiting)
            pipe.zrange(shard.keys.lane_since, 0, 0, withscores=True)
            counts, first = await pipe.execute()
            for webhook_id, count in cast("dict[bytes, bytes]", counts).items():
                if int(count) > 0:
                    jobs += int(count)
                    by_webhook[webhook_id.decode()] = int(count)
            if first:
                ms = int(cast("float", first[0][1]))
                oldest = ms if oldest is None else min(oldest, ms)
    return Ordering(jobs, by_webhook, oldest)
