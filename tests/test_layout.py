"""The shard layout (``redis.shards``) that every process records at start: ``served`` is the
most shards there ever were, whatever order processes start in."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from dispatcher.queue.keys import Keys
from dispatcher.queue.store import Store

if TYPE_CHECKING:
    from redis import asyncio as aioredis


async def _adopt_at_once(redis_url: str, prefix: str, counts: list[int]) -> None:
    """One process per count, each with its own connection, all recording at the same time."""
    stores = [Store.open(redis_url, prefix=prefix) for _ in counts]
    try:
        for store in stores:  # connect first, so the calls below reach Redis together
            await store.redis.ping()
        await asyncio.gather(*(s.adopt_layout(n) for s, n in zip(stores, counts, strict=True)))
    finally:
        for store in stores:
            await store.close()


async def test_daemons_starting_together_never_lower_served(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> None:
    """Daemons started at once with different redis.shards leave every shard any of them
    had in everyone's fan-out: served is the largest count."""
    counts = [8, 1, 2, 3, 4, 5, 6, 7]  # the largest first: a last write must not undo it
    await _adopt_at_once(redis_url, prefix, counts)
    served = await redis.hget(Keys(prefix).layout, "served")
    assert served == b"8"
    store = Store.open(redis_url, prefix=prefix)
    try:
        assert [s.keys.shard for s in await store.all_shards()] == list(range(8))
    finally:
        await store.close()


async def test_a_lower_count_never_lowers_served(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> None:
    """Recording fewer shards changes where new webhooks go, never which shards are served."""
    store = Store.open(redis_url, prefix=prefix)
    try:
        layout, before = await store.adopt_layout(3)
        assert (before, layout.shards, layout.served) == (3, 3, 3)  # a new Redis
        await redis.hset(Keys(prefix).layout, mapping={"shards": 2, "served": 6})  # lowered once
        for count in (1, 4, 2):
            layout, before = await store.adopt_layout(count)
            assert (layout.shards, layout.served) == (count, 6)
        assert before == 4  # what the previous process recorded
        stored = await redis.hmget(Keys(prefix).layout, ["shards", "served"])
        assert stored == [b"2", b"6"]
    finally:
        await store.close()
