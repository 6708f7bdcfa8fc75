"""The handle every queue verb takes: one Redis client, its key names and scripts, a clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from dispatcher.queue.clock import RedisClock
from dispatcher.queue.connection import STANDALONE, Cluster, mode_of, open_redis
from dispatcher.queue.keys import Keys
from dispatcher.queue.scripts import Scripts

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(slots=True)
class Store:
    redis: Redis
    keys: Keys
    scripts: Scripts
    clock: RedisClock
    mode: str = STANDALONE  # standalone, cluster or sentinel (connection.mode_of)
    cluster: Cluster | None = None  # the same client as ``redis``, when it is a Redis Cluster

    @classmethod
    def open(cls, url: str, *, prefix: str = "dispatcher", max_connections: int = 64) -> Store:
        keys = Keys(prefix)
        client = open_redis(url, max_connections=max_connections, home_key=keys.jobs)
        cluster = client if isinstance(client, Cluster) else None
        # A RedisCluster offers the command methods of Redis that the queue verbs call; what
        # differs (INFO per node, TIME, CONFIG GET) is asked through ``cluster``.
        redis = cast("Redis", client)
        return cls(redis, keys, Scripts.register(redis), RedisClock(), mode_of(client), cluster)

    async def close(self) -> None:
        await self.redis.aclose()
