"""A webhook's recent jobs (``GET /v1/webhooks/{id}/jobs``), found by a bounded read.

There is no index of jobs by webhook, and keeping one would add writes to every delivery, so
``recent_jobs.lua`` reads the webhook's shard instead: its newest ``SCANNED_DONE`` delivered
jobs (the ``done`` zset) and its newest ``SCANNED_DEAD`` DLQ entries, at most ``SCANNED_BYTES``
of records in all, and keeps this webhook's. A quiet webhook on a busy shard may show none:
the answer says how many records were read (``scanned``). Queued and retrying jobs are not
found this way (their ids are in streams and zsets of every queue, not by recency).
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any

from dispatcher.model import rfc3339
from dispatcher.queue import codec
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from dispatcher.queue.store import Store

#: Delivered jobs read at most (the newest of the shard's ``done`` zset).
SCANNED_DONE = 2000
#: DLQ entries read at most (the newest of the shard's DLQ).
SCANNED_DEAD = 500
#: Bytes of records read at most by one call (a dead job's record holds its payload), so a
#: call stays a few ms of Redis whatever the payloads (then it stops early).
SCANNED_BYTES = 4 * 1024 * 1024
#: The largest ``limit``.
MAX_LIMIT = 100


async def recent_jobs(store: Store, webhook_id: str, *, limit: int = 20) -> dict[str, Any]:
    """``{"items", "scanned"}``: the webhook's newest jobs among those read, newest finished
    first, each ``{id, state, event_type, attempt, created_at, finished_at, last_status,
    last_error}``."""
    shard = store.of_webhook(webhook_id)
    keys = shard.keys
    with redis_errors():
        flat = await shard.scripts.recent_jobs(
            keys=[keys.done, keys.jobs, keys.dlq],
            args=[webhook_id, SCANNED_DONE, SCANNED_DEAD, SCANNED_BYTES],
        )
    found: dict[str, Any] = {}
    for i in range(1, len(flat), 2):
        job_id = flat[i].decode()
        with suppress(ValueError, KeyError, TypeError):
            job = codec.decode_meta(job_id, flat[i + 1])
            if job.webhook_id == webhook_id:
                found[job_id] = job
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
    return {"items": items, "scanned": int(flat[0])}
