"""The handle every queue verb takes: one Redis client, its key names and scripts, a clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dispatcher.queue.clock import RedisClock
from dispatcher.queue.connection import open_redis
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

    @classmethod
    def open(cls, url: str, *, prefix: str = "dispatcher", max_connections: int = 64) -> Store:
        redis = open_redis(url, max_connections=max_connections)
        return cls(redis, Keys(prefix), Scripts.register(redis), RedisClock())

    async def close(self) -> None:
        await self.redis.aclose()
