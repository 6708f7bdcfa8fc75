"""Sending again on request: the test-send slot of a webhook (one a second across every
process) and the retry of an existing job (``retry_job.lua``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.errors import Conflict, NotFound
from dispatcher.model import JobState
from dispatcher.queue import dlq_ops, records
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from dispatcher.queue.store import Store

#: A webhook takes at most one test send per this many milliseconds, across every process.
TEST_SEND_INTERVAL_MS = 1000


async def take_test_slot(store: Store, webhook_id: str) -> bool:
    """True when this caller may test ``webhook_id`` now (``SET NX PX`` on its
    ``testsend`` key, in its shard); False when another test took the slot within the last
    ``TEST_SEND_INTERVAL_MS``."""
    store = store.of_webhook(webhook_id)
    with redis_errors():
        taken = await store.redis.set(
            store.keys.test_send(webhook_id), b"1", nx=True, px=TEST_SEND_INTERVAL_MS
        )
    return bool(taken)


#: How many times ``retry_job`` reads a job again when it changed between the read and the
#: write (a promote, a settle or another retry got in first).
RETRY_READS = 3

_IN_FLIGHT = "is already queued or in flight: it is sent (again) without a retry"
_WAITS = {
    "rate_limit": "its webhook's rate limit",
    "max_in_flight": "room under its webhook's max_in_flight",
    "endpoint_capacity": "room at its endpoint",
    "breaker": "its webhook's circuit breaker to close",
    "paused": "its webhook to be resumed",
    "deliver_at": "its deliver_at time (it was never attempted)",
}


async def retry_job(store: Store, job_id: str) -> None:
    """Send the job again as a new series of attempts (attempts reset, history kept), with the
    same id (its ``webhook-id``): a dead job as a replay of it alone (``replay.lua``), a job
    scheduled for its next attempt now (``retry_job.lua``), both at the end of its queue.

    ``NotFound`` for an unknown or swept job; ``Conflict`` for a queued or active job, a
    delivered one (its record keeps no payload: codec.py), one deferred without an attempt
    (rate limit, max_in_flight, endpoint capacity, breaker, pause: it goes when that frees), or
    one never attempted that waits for its ``deliver_at`` (a retry never sends a job early);
    ``NotReplayable`` for a dead job that cannot go back (``Client.replay``).
    """
    for _ in range(RETRY_READS):
        job = await records.get_job(store, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if job.state in {JobState.QUEUED, JobState.ACTIVE}:
            raise Conflict(f"job {job_id} {_IN_FLIGHT}")
        if job.state is JobState.DELIVERED:
            raise Conflict(
                f"job {job_id} was delivered, and a delivered job's record keeps no payload, so "
                "it cannot be sent again: publish the event again instead"
            )
        if job.state is JobState.DEAD:
            if (await dlq_ops.replay(store, [job_id]))["replayed"]:
                return
            continue  # no longer dead (another replay, or swept): read it again
        shard = store.of_job(job_id)
        keys = shard.keys
        with redis_errors():
            reply = await shard.scripts.retry_job(
                keys=[keys.jobs, keys.delayed(job.stream), keys.ready(job.stream)],
                args=[job_id, job.stream],
            )
        why = reply[0].decode()
        if why == "moved":
            return
        if why == "not_due":
            waits = _WAITS.get(reply[1].decode(), "its turn")
            raise Conflict(
                f"job {job_id} waits for {waits} without spending an attempt; it is sent "
                "when that frees"
            )
        if why == "malformed":
            raise Conflict(f"job {job_id}'s record cannot be read, so it cannot be sent again")
    raise Conflict(f"job {job_id} kept changing under this request; try again")
