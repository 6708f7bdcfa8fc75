"""The dead-letter queue: a stream of dead jobs, whose entry ids make a stable cursor."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, cast

from dispatcher.model import Job, is_job_id
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from dispatcher.queue.store import Store


async def dlq_size(store: Store) -> int:
    with redis_errors():
        size: int = await store.redis.xlen(store.keys.dlq)
    return size


async def replay(store: Store, job_ids: list[str]) -> list[str]:
    """Put dead jobs back in their ready queues; returns the ids replayed.

    Unknown ids and jobs that are not dead are skipped, so a replay can be repeated safely.
    """
    keys = store.keys
    ids = [j for j in dict.fromkeys(job_ids) if is_job_id(j)]
    if not ids:
        return []
    with redis_errors():
        # decode_responses is off: the records are bytes, whatever redis-py's types say
        raws = await cast("Awaitable[list[bytes | None]]", store.redis.hmget(keys.jobs, ids))
    by_queue: defaultdict[str, list[str]] = defaultdict(list)
    for job_id, raw in zip(ids, raws, strict=True):
        if raw is not None and not raw.startswith(b"@"):  # a locator: queued, not dead
            by_queue[Job.decode(job_id, raw).queue].append(job_id)
    replayed: list[str] = []
    for queue, queue_ids in by_queue.items():
        with redis_errors():
            done, _skipped = await store.scripts.replay(
                keys=[keys.dlq, keys.jobs, keys.ready(queue)], args=[queue, *queue_ids]
            )
        replayed += [r.decode() for r in done]
    return replayed
