"""The skeleton of every background loop: run a step, back off on Redis errors, say so once.

A step that raises (anything but cancellation) is a failure: the loop's ``Outage`` counts it
in ``dispatcher_redis_errors_total{loop=...}``, logs ``redis.unavailable`` on the first one
and ``redis.recovered`` on the next success, and waits a capped, jittered back-off before the
loop goes on. ``attempt`` runs one step that way; ``run_every`` repeats one until ``stop``;
``until_done`` repeats one until it succeeds once.
"""

from __future__ import annotations

import asyncio
import enum
import random
from typing import TYPE_CHECKING, TypeVar

import structlog

from dispatcher.queue.connection import is_unavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from dispatcher.liveness import Liveness
    from dispatcher.metrics import Metrics

__all__ = ["FAILED", "Outage", "attempt", "run_every", "sleep_until_stop", "until_done"]

log = structlog.get_logger()

T = TypeVar("T")


class _Failed(enum.Enum):
    FAILED = "failed"


#: What ``attempt`` returns when its step failed (and the back-off is over).
FAILED = _Failed.FAILED


class Outage:
    """Capped, jittered backoff for one loop, with one log line when Redis goes and returns.

    With ``watch``, the loop is one of the essential ones the watchdog follows (liveness.py):
    a success, or a failure because Redis is unavailable, is a sign of progress under the name
    ``watch``; any other failure is not, so a loop failing the same way forever goes stale.
    """

    def __init__(
        self,
        loop: str,
        metrics: Metrics,
        *,
        cap_s: float = 5.0,
        watch: tuple[Liveness, str] | None = None,
        max_age_s: float | None = None,
    ) -> None:
        self.loop = loop
        self.metrics = metrics
        self.cap_s = cap_s
        self.failures = 0
        self.watch = watch
        if watch is not None:
            watch[0].expect(watch[1], max_age_s)

    def idle(self) -> None:
        """The loop waits for work other loops produce: healthy however long it waits."""
        if self.watch is not None:
            self.watch[0].idle(self.watch[1])

    def wake(self) -> None:
        """Work arrived: from now on the loop must show progress again."""
        if self.watch is not None:
            self.watch[0].wake(self.watch[1])

    async def failed(self, exc: BaseException, stop: asyncio.Event) -> None:
        if self.watch is not None:
            if is_unavailable(exc):
                self.watch[0].beat(self.watch[1])
            else:
                self.watch[0].wake(self.watch[1])
        self.metrics.inc("dispatcher_redis_errors_total", loop=self.loop)
        if self.failures == 0:
            log.warning("redis.unavailable", loop=self.loop, error=str(exc) or type(exc).__name__)
        self.failures += 1
        delay = min(self.cap_s, 0.05 * 2 ** min(self.failures, 10))
        await sleep_until_stop(stop, delay * random.uniform(0.5, 1.0))

    def ok(self) -> None:
        if self.watch is not None:
            self.watch[0].beat(self.watch[1])
        if self.failures:
            log.info("redis.recovered", loop=self.loop, failures=self.failures)
            self.failures = 0


async def sleep_until_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


async def attempt(
    step: Callable[[], Awaitable[T]], outage: Outage, stop: asyncio.Event
) -> T | _Failed:
    """Run ``step`` once: its result, or ``FAILED`` after the outage's back-off (cut short by
    ``stop``). Cancellation goes through."""
    try:
        result = await step()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await outage.failed(exc, stop)
        return FAILED
    outage.ok()
    return result


async def run_every(
    step: Callable[[], Awaitable[object]],
    outage: Outage,
    stop: asyncio.Event,
    interval_s: float,
    *,
    pause: Callable[[], Awaitable[None]] | None = None,
    pause_after_failure: bool = False,
) -> None:
    """Until ``stop``: run ``step``, then sleep ``interval_s`` (or await ``pause``). After a
    failure the back-off replaces the sleep, unless ``pause_after_failure`` (a loop that must
    keep its rhythm) sleeps as well."""
    while not stop.is_set():
        if await attempt(step, outage, stop) is FAILED and not pause_after_failure:
            continue
        if pause is not None:
            await pause()
        else:
            await sleep_until_stop(stop, interval_s)


async def until_done(
    step: Callable[[], Awaitable[object]], outage: Outage, stop: asyncio.Event
) -> bool:
    """Run ``step`` until it succeeds once (True), or until ``stop`` (False)."""
    while not stop.is_set():
        if await attempt(step, outage, stop) is not FAILED:
            return True
    return False
