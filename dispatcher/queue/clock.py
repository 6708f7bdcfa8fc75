"""Time as the Redis server tells it, so workers on skewed hosts agree on what is due.

``now_ms()`` is local monotonic time plus an offset measured with ``TIME``; between
measurements it cannot jump when the host's wall clock is stepped. Every ``Store`` keeps its
clock measured (RELIABILITY R8): ``refresh()`` measures when the clock never was, or was
``max_age_s`` ago, and otherwise costs no round trip, so the hot publish path pays one ``TIME``
per ``max_age_s``. The worker's promoter also calls ``sync()`` every few seconds, which returns
how far the offset moved since the last ``sync()`` (refreshes included) and is reported as a
clock jump when it is large.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: How long a measurement of the Redis clock is trusted before ``refresh()`` measures again.
MAX_AGE_S = 10.0


class Clock(Protocol):
    def now_ms(self) -> int: ...


class RedisClock:
    def __init__(self, *, max_age_s: float = MAX_AGE_S) -> None:
        # Until the first measurement the host's clock stands in for the server's.
        self._offset_ms = time.time() * 1000 - time.monotonic() * 1000
        self.synced = False
        self.max_age_s = max_age_s
        self._synced_at = float("-inf")  # monotonic
        self._unreported_s = 0.0  # offset moves seen by refresh(), for the next sync()
        self._measuring = False

    def now_ms(self) -> int:
        return int(time.monotonic() * 1000 + self._offset_ms)

    @property
    def stale(self) -> bool:
        """True until the first measurement, and once the last is ``max_age_s`` old."""
        return time.monotonic() - self._synced_at >= self.max_age_s

    async def refresh(self, redis: Redis) -> None:
        """Measure the server's clock when it is stale; otherwise return at once.

        While one measurement is under way, other callers keep the offset they have (only
        before the first measurement does each caller measure).
        """
        if not self.stale or (self._measuring and self.synced):
            return
        self._measuring = True
        try:
            self._unreported_s += await self._measure(redis)
        finally:
            self._measuring = False

    async def sync(self, redis: Redis) -> float:
        """Measure the server's clock; returns how far the offset moved, in seconds, since the
        last ``sync()`` (0 for the first measurement)."""
        moved_s = await self._measure(redis) + self._unreported_s
        self._unreported_s = 0.0
        return moved_s

    async def _measure(self, redis: Redis) -> float:
        before = time.monotonic()
        seconds, micros = await redis.time()
        after = time.monotonic()
        server_ms = seconds * 1000 + micros / 1000
        offset_ms = server_ms - (before + after) / 2 * 1000
        moved_s = (offset_ms - self._offset_ms) / 1000 if self.synced else 0.0
        self._offset_ms = offset_ms
        self.synced = True
        self._synced_at = after
        return moved_s
