"""Time as the Redis server tells it, so workers on skewed hosts agree on what is due.

``now_ms()`` is local monotonic time plus an offset measured with ``TIME``; between
measurements it cannot jump when the host's wall clock is stepped. ``sync()`` returns how far
the offset moved, which the promoter reports as a clock jump when it is large (RELIABILITY R8).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Clock(Protocol):
    def now_ms(self) -> int: ...


class RedisClock:
    def __init__(self) -> None:
        self._offset_ms = time.time() * 1000 - time.monotonic() * 1000
        self.synced = False

    def now_ms(self) -> int:
        return int(time.monotonic() * 1000 + self._offset_ms)

    async def sync(self, redis: Redis) -> float:
        """Measure the server's clock; returns the change of the offset in seconds."""
        before = time.monotonic()
        seconds, micros = await redis.time()
        after = time.monotonic()
        server_ms = seconds * 1000 + micros / 1000
        offset_ms = server_ms - (before + after) / 2 * 1000
        moved_s = (offset_ms - self._offset_ms) / 1000 if self.synced else 0.0
        self._offset_ms = offset_ms
        self.synced = True
        return moved_s
