"""Redis failures as the errors the API promises, the default queue's name, the region that
holds what is asked (``region_store``), and job look-ups (a job from its record or stream entry,
and the job as users see it).

Webhook records are in ``webhooks.py`` and the publish fan-out in ``publishing.py``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import redis.exceptions as rex

from dispatcher.errors import DispatcherError, RedisOutOfMemory, RedisUnavailable
from dispatcher.ids import is_job_id
from dispatcher.model import Job, JobState, rfc3339
from dispatcher.queue import breakers, codec
from dispatcher.queue.keys import GROUP

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator

    from dispatcher.queue.regions import Regions
    from dispatcher.queue.store import Store

DEFAULT_QUEUE = "default"

# redis-py types its replies loosely (bytes or str, and in 5.x "awaitable or not"). Our
# connections have decode_responses off, so each read below casts to the bytes it gets.


def translate(exc: Exception) -> DispatcherError | None:
    """The error the API and the Python client promise for a Redis failure, if it is one."""
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError):
        return RedisUnavailable(f"Redis is unavailable: {exc}")
    if isinstance(exc, rex.OutOfMemoryError) or (
        isinstance(exc, rex.ResponseError) and str(exc).startswith("OOM")  # some servers keep it
    ):
        return RedisOutOfMemory("Redis is out of memory (maxmemory reached)")
    return None


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn Redis failures into the errors the API and the Python client promise."""
    try:
        yield
    except rex.RedisError as exc:
        translated = translate(exc)
        if translated is None:
            raise
        raise translated from exc


async def region_store(regions: Regions, region: str | None) -> tuple[Store, str | None]:
    """The store of ``region``'s Redis and the name to give ``regions.reaching`` around calls to
    it (None: the home region, whose failures are this region's own ``RedisUnavailable``).

    None, or the home region: the home store, with no Redis call. Another name reads the home
    layout first (cached, ``Store.read_layout``) to learn the home region when it was not
    configured; without regions (no ``layout.region``) a name is read as the home store, where
    nothing carries a region, so a look-up answers "not found" as before regions. A region with
    no URL here raises ``RegionUnavailable``; a home region given to this process that is not the
    home Redis's, ``InvalidField`` (``Regions.check``).
    """
    # The layout (cached) says whether a region given to this process is this Redis's, and
    # which region is home when none was given.
    if regions.configured is not None or not regions.is_home(region):
        with redis_errors():
            await regions.home.read_layout()
        regions.check()
    if not regions.enabled or regions.is_home(region):
        return regions.home, None
    return regions.store(region), region


# --- jobs ------------------------------------------------------------------------------------


async def get_job(store: Store, job_id: str) -> Job | None:
    """The job, from its record or, while it was never attempted, from its stream entry."""
    if not is_job_id(job_id):
        return None
    store = store.of_job(job_id)
    for _ in range(2):  # a job may leave its entry between the two reads: look once more
        with redis_errors():
            raw = await cast("Awaitable[bytes | None]", store.redis.hget(store.keys.jobs, job_id))
        if raw is None or not codec.is_locator(raw):
            return codec.try_decode(job_id, raw)
        try:
            queue, sid = codec.parse_locator(raw, job_id)
        except (ValueError, KeyError, UnicodeDecodeError):
            return None
        with redis_errors():
            entries = await cast(
                "Awaitable[list[tuple[bytes, dict[bytes, bytes]]]]",
                store.redis.xrange(store.keys.ready(queue), sid, sid),
            )
        if entries:
            try:
                return _from_entry(job_id, queue, sid, entries[0][1])
            except (KeyError, ValueError, UnicodeDecodeError):
                return None
    return None


def _from_entry(job_id: str, stream: str, sid: str, fields: dict[bytes, bytes]) -> Job:
    """The job of a ready-stream entry, or of a held stream's (held while its webhook is
    paused: its fields leave out the webhook, which the stream names)."""
    held = codec.held_stream(stream)
    if held is None:
        return codec.from_entry(job_id, stream, sid, fields)
    webhook_id, ready = held
    job = codec.from_entry(job_id, ready, sid, {**fields, b"w": webhook_id.encode()})
    job.hold()
    return job


async def job_view(store: Store, job: Job) -> dict[str, Any]:
    """The job as users see it: a queued job whose entry is claimed right now is active;
    ``breaker`` is the state of its webhook's breaker."""
    state = job.state
    store = store.of_job(job.id)
    if state is JobState.QUEUED and job.sid:
        with redis_errors():
            try:
                pending = await store.redis.xpending_range(
                    store.keys.ready(job.stream), GROUP, min=job.sid, max=job.sid, count=1
                )
            except rex.ResponseError:  # NOGROUP: no worker has started on this queue yet
                pending = []
        if pending:
            state = JobState.ACTIVE
            with redis_errors():
                clock = await store.refresh_clock()
            job.processed_at_ms = clock.now_ms() - int(pending[0]["time_since_delivered"])
    view = job.to_wire(state=state)
    if not job.is_task:  # a task has no webhook, so no breaker
        with redis_errors():
            found = await breakers.states(store, [job.webhook_id])
        breaker = found.get(job.webhook_id)
        view["breaker"] = breaker.state if breaker else breakers.CLOSED
    if state is JobState.DELIVERED:
        view["retry_until"] = await _retry_until(store, job.id)
    return view


async def _retry_until(store: Store, job_id: str) -> str | None:
    """Until when a delivered job's payload is kept for a retry (settle.lua's key, its TTL);
    None when it is gone."""
    with redis_errors():
        left_ms = await store.redis.pttl(store.keys.payload(job_id))
        if left_ms < 0:
            return None
        clock = await store.refresh_clock()
    return rfc3339(clock.now_ms() + left_ms)
