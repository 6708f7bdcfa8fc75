"""A webhook's recent jobs (``GET /v1/webhooks/{id}/jobs``), found by a bounded read.

There is no index of jobs by webhook, and keeping one would add writes to every delivery, so
``recent_jobs.lua`` reads the webhook's shard instead: its newest ``SCANNED_DEAD`` DLQ entries,
then its newest delivered jobs (the ``done`` zset) ``SLICE`` at a time until ``limit`` of this
webhook's are found or ``SCANNED_DONE`` were read; each call stops once it read
``CALL_BYTES`` of records (a dead job's holds its payload; a delivered one's too while
payloads are kept), so it holds Redis a few ms, and the next call goes on from the record
after its last; a whole read is at most 5 calls. A quiet webhook on a busy shard may show
none: the answer says how many records were read (``scanned``). Queued and retrying jobs
are not found this way (their ids are in streams and zsets of every queue, not by recency).
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any

from dispatcher.model import Job, rfc3339
from dispatcher.queue import codec
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from dispatcher.queue.store import Store

#: Delivered jobs read at most (the newest of the shard's ``done`` zset).
SCANNED_DONE = 2000
#: DLQ entries read at most (the newest of the shard's DLQ).
SCANNED_DEAD = 500
#: Bytes of records one call reads at most (and one record more): a dead job's record holds its
#: payload, so with large payloads a call reads fewer records rather than hold Redis longer.
CALL_BYTES = 1024 * 1024
#: Delivered jobs one script call reads at most.
SLICE = 500
#: The largest ``limit``.
MAX_LIMIT = 100


async def recent_jobs(store: Store, webhook_id: str, *, limit: int = 20) -> dict[str, Any]:
    """``{"items", "scanned"}``: the webhook's newest jobs among those read, newest finished
    first, each ``{id, state, event_type, attempt, created_at, finished_at, last_status,
    last_error}``."""
    shard = store.of_webhook(webhook_id)
    keys = shard.keys
    found: dict[str, Job] = {}
    scanned = 0

    async def read(first: int, last: int, dead: int) -> tuple[int, int]:
        """One script call; the records and bytes it read."""
        nonlocal scanned
        with redis_errors():
            flat = await shard.scripts.recent_jobs(
                keys=[keys.done, keys.jobs, keys.dlq],
                args=[webhook_id, first, last, dead, CALL_BYTES],
            )
        scanned += int(flat[0])
        for i in range(2, len(flat), 2):
            job_id = flat[i].decode()
            with suppress(ValueError, KeyError, TypeError):
                job = codec.decode_meta(job_id, flat[i + 1])
                if job.webhook_id == webhook_id and job_id not in found:
                    found[job_id] = job
        return int(flat[0]), int(flat[1])

    # The dead first (one call; ranks 1 to 0: no delivered job), then delivered jobs newest
    # first until ``limit`` of this webhook's: older delivered ones could not be among the
    # newest ``limit``. A call cut short by its byte budget is followed from the record after
    # its last, so no newer job is skipped; at most SCANNED_DONE / SLICE calls of delivered.
    await read(1, 0, SCANNED_DEAD)
    dead_found = len(found)
    start = 0
    for _ in range(SCANNED_DONE // SLICE):
        if len(found) - dead_found >= limit or start >= SCANNED_DONE:
            break
        asked = min(SLICE, SCANNED_DONE - start)
        records, size = await read(start, start + asked - 1, 0)
        start += records
        if records < asked and size < CALL_BYTES:  # the zset ended
            break
    jobs = sorted(
        found.values(),
        key=lambda job: (job.finished_at_ms or job.created_at_ms, job.id),
        reverse=True,
    )
    items = [
        {
            "id": job.id,
            "state": job.state.value,
            "event_type": job.event_type,
            "attempt": job.attempt,
            "created_at": rfc3339(job.created_at_ms),
            "finished_at": rfc3339(job.finished_at_ms),
            "last_status": job.last_status,
            "last_error": job.last_error,
        }
        for job in jobs[:limit]
    ]
    return {"items": items, "scanned": scanned}
