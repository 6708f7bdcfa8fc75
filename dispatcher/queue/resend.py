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
    "undecryptable": "the key its webhook's secrets are encrypted with (security.encryption_keys)",
    "deliver_at": "its deliver_at time (it was never attempted)",
}


def _payload_gone(job_id: str, payload_retention_s: float) -> str:
    if payload_retention_s <= 0:
        kept = "jobs.payload_retention_s is 0: a delivered job's payload is dropped at delivery"
    else:
        kept = (
            f"a delivered job's payload is kept jobs.payload_retention_s "
            f"({payload_retention_s:g} s) after its delivery"
        )
    return (
        f"job {job_id} was delivered and its payload is no longer kept ({kept}), so it cannot "
        "be sent again: publish the event again instead"
    )


def _refusal(job_id: str, reply: list[bytes], payload_retention_s: float) -> Conflict | None:
    """The 409 of retry_job.lua's answer; None when the job changed (read it again)."""
    why = reply[0].decode()
    if why == "payload_gone":
        return Conflict(_payload_gone(job_id, payload_retention_s))
    if why in {"webhook_deleted", "webhook_disabled"}:
        return Conflict(
            f"job {job_id} was delivered, but its webhook is {why[8:]}, so it cannot be sent "
            "again"
        )
    if why == "not_due":
        waits = _WAITS.get(reply[1].decode(), "its turn")
        return Conflict(
            f"job {job_id} waits for {waits} without spending an attempt; it is sent when that "
            "frees"
        )
    if why == "malformed":
        return Conflict(f"job {job_id}'s record cannot be read, so it cannot be sent again")
    return None


async def retry_job(store: Store, job_id: str, *, payload_retention_s: float = 0.0) -> None:
    """Send the job again as a new series of attempts (attempts reset, history kept), with the
    same id (its ``webhook-id``): a dead job as a replay of it alone (``replay.lua``), a job
    scheduled for its next attempt, or a delivered one whose payload is still kept
    (``jobs.payload_retention_s``), now (``retry_job.lua``); all at the end of its queue, a
    FIFO job at the back of its lane.

    ``NotFound`` for an unknown or swept job; ``Conflict`` for a queued or active job, a
    delivered one whose payload is gone (the message names ``payload_retention_s``, the
    daemon's as given here) or whose webhook is deleted or disabled, one deferred without an
    attempt (rate limit, max_in_flight, endpoint capacity, breaker, pause: it goes when that
    frees), or one never attempted that waits for its ``deliver_at`` (a retry never sends a
    job early); ``NotReplayable`` for a dead job that cannot go back (``Client.replay``).
    """
    for _ in range(RETRY_READS):
        job = await records.get_job(store, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if job.state in {JobState.QUEUED, JobState.ACTIVE}:
            raise Conflict(f"job {job_id} {_IN_FLIGHT}")
        if job.state is JobState.DEAD:
            if (await dlq_ops.replay(store, [job_id]))["replayed"]:
                return
            continue  # no longer dead (another replay, or swept): read it again
        shard = store.of_job(job_id)
        keys = shard.keys
        with redis_errors():
            reply = await shard.scripts.retry_job(
                keys=[
                    keys.jobs,
                    keys.delayed(job.stream),
                    keys.ready(job.stream),
                    keys.done,
                    keys.payload(job_id),
                    keys.webhooks,
                ],
                args=[job_id, job.stream],
            )
        if reply[0] == b"moved":
            return
        refusal = _refusal(job_id, reply, payload_retention_s)
        if refusal is not None:
            raise refusal
    raise Conflict(f"job {job_id} kept changing under this request; try again")
