"""The handle every queue verb takes: one Redis client, its key names and scripts, a clock.

A ``Store`` addresses one shard (``keys.shard``); ``Store.open`` gives shard 0, which also
holds the deployment-wide keys. ``shard(k)``, ``of_webhook(id)`` and ``of_job(id)`` give the
store of another shard: the same client, scripts and clock, that shard's keys. Verbs that
span every shard (listings, counts) take any store and ask ``all_shards()``.

Every store follows the Redis server's clock, the Client's and the admin's as much as the
worker's (RELIABILITY R8): ``refresh_clock()`` measures it on first use and again once the last
measurement is ``clock.MAX_AGE_S`` old, and costs nothing in between. ``read_layout()`` (so
every verb that asks ``all_shards()``) refreshes it; verbs on one webhook or job that read the
clock call ``refresh_clock()`` themselves.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from dispatcher.queue.clock import RedisClock
from dispatcher.queue.connection import STANDALONE, Cluster, mode_of, open_redis
from dispatcher.queue.keys import Keys, shard_of
from dispatcher.queue.scripts import Scripts

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from redis.asyncio import Redis

    from dispatcher.crypto import Keyring


class RegionMismatchError(Exception):
    """The Redis is recorded as another region's (``layout.region``)."""

    def __init__(self, stored: str, wanted: str) -> None:
        super().__init__(
            f"this Redis is region {stored!r}'s (its layout says so), not {wanted!r}: "
            "check region and [regions]"
        )
        self.stored, self.wanted = stored, wanted


#: How long a process trusts the shard layout it read before reading it again.
LAYOUT_MAX_AGE_S = 5.0


@dataclass(slots=True)
class Layout:
    """``shards``: new webhooks are spread over shards 0..shards-1. ``served``: shards
    0..served-1 may hold work (lowering ``redis.shards`` leaves the webhooks where they are)."""

    shards: int = 1
    served: int = 1
    #: With ``[regions]`` (docs/regions.md): the region this Redis is, the deployment's region
    #: names (its own included, sorted), and a random token written once per Redis, so a wiped
    #: one is told apart from before (the relay's fence). None and () without regions.
    region: str | None = None
    regions: tuple[str, ...] = ()
    incarnation: str | None = None
    read_at: float = float("-inf")  # monotonic


@dataclass(slots=True)
class Store:
    redis: Redis
    keys: Keys
    scripts: Scripts
    clock: RedisClock
    mode: str = STANDALONE  # standalone, cluster or sentinel (connection.mode_of)
    cluster: Cluster | None = None  # the same client as ``redis``, when it is a Redis Cluster
    layout: Layout = field(default_factory=Layout)  # shared by every shard's store
    _shards: dict[int, Store] = field(default_factory=dict)  # shared too
    #: Seals and opens webhook secrets (security.encryption_keys); None: they are plain text.
    keyring: Keyring | None = None

    @classmethod
    def open(
        cls,
        url: str,
        *,
        prefix: str = "dispatcher",
        max_connections: int = 64,
        keyring: Keyring | None = None,
    ) -> Store:
        keys = Keys(prefix)
        client = open_redis(url, max_connections=max_connections, home_key=keys.jobs)
        cluster = client if isinstance(client, Cluster) else None
        # A RedisCluster offers the command methods of Redis that the queue verbs call; what
        # differs (INFO per node, TIME, CONFIG GET) is asked through ``cluster``.
        redis = cast("Redis", client)
        return cls(
            redis,
            keys,
            Scripts.register(redis),
            RedisClock(),
            mode_of(client),
            cluster,
            keyring=keyring,
        )

    async def close(self) -> None:
        await self.redis.aclose()

    # --- shards --------------------------------------------------------------------------------

    def shard(self, shard: int) -> Store:
        """The store of one shard (this one when it is already that shard)."""
        if shard == self.keys.shard:
            return self
        found = self._shards.get(shard)
        if found is None:
            keys = Keys(self.keys.prefix, shard)
            found = Store(
                self.redis,
                keys,
                self.scripts,
                self.clock,
                self.mode,
                self.cluster,
                self.layout,
                self._shards,
                self.keyring,
            )
            self._shards[shard] = found
        return found

    @property
    def home(self) -> Store:
        """Shard 0: the layout, paused queues, workers' heartbeats and per-minute counters."""
        return self.shard(0)

    def of_webhook(self, webhook_id: str) -> Store:
        return self.shard(shard_of(webhook_id))

    def of_job(self, job_id: str) -> Store:
        return self.shard(shard_of(job_id))

    async def refresh_clock(self) -> RedisClock:
        """The clock, measured against Redis ``TIME`` first when stale (see the docstring)."""
        await self.clock.refresh(self.redis)
        return self.clock

    async def read_layout(self, *, max_age_s: float = LAYOUT_MAX_AGE_S) -> Layout:
        """The shard layout, read again when older than ``max_age_s`` (one HMGET); the clock
        is refreshed when stale."""
        if self.clock.stale:
            await self.clock.refresh(self.redis)
        layout = self.layout
        if time.monotonic() - layout.read_at < max_age_s:
            return layout
        raw = await cast(
            "Awaitable[list[bytes | None]]",
            self.redis.hmget(
                self.home.keys.layout, ["shards", "served", "region", "regions", "incarnation"]
            ),
        )
        layout.shards = max(1, int(raw[0] or 1))
        layout.served = max(layout.shards, int(raw[1] or 1))
        layout.region = raw[2].decode() if raw[2] else None
        layout.regions = tuple(raw[3].decode().split()) if raw[3] else ()
        layout.incarnation = raw[4].decode() if raw[4] else None
        layout.read_at = time.monotonic()
        return layout

    async def all_shards(self) -> list[Store]:
        """Every shard that may hold work, shard 0 first."""
        layout = await self.read_layout()
        return [self.shard(k) for k in range(layout.served)]

    async def adopt_layout(self, shards: int) -> tuple[Layout, int]:
        """Record ``redis.shards`` (the daemon does at start); returns the layout and the
        number of shards new webhooks were spread over before (``shards`` on a new Redis).

        One script (``adopt_layout.lua``) raises ``served`` to the most there ever were, so
        processes starting at once with different counts never lower it."""
        before, served = await self.scripts.adopt_layout(
            keys=[self.home.keys.layout], args=[shards]
        )
        if self.clock.stale:
            await self.clock.refresh(self.redis)
        layout = self.layout
        layout.shards, layout.served = shards, int(served)
        layout.read_at = time.monotonic()
        return layout, int(before)

    async def adopt_region(self, region: str, regions: tuple[str, ...]) -> Layout:
        """Record that this Redis is ``region`` of a deployment with ``regions`` (the daemon
        does at start, with ``[regions]``): ``region`` and ``incarnation`` are written once,
        ``regions`` each time. Raises ``RegionMismatchError`` when the Redis is another region's
        (two regions' settings naming one Redis), changing nothing."""
        layout_key = self.home.keys.layout
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(layout_key, "region", region)
        pipe.hget(layout_key, "region")
        _, stored = await pipe.execute()
        if stored is not None and stored.decode() != region:
            raise RegionMismatchError(stored.decode(), region)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(layout_key, mapping={"regions": " ".join(sorted(regions))})
        pipe.hsetnx(layout_key, "incarnation", os.urandom(8).hex())
        await pipe.execute()
        self.layout.read_at = float("-inf")
        return await self.read_layout()
