"""A job's transitions (model.Job): each changes the fields its outcome changes, no others."""

from __future__ import annotations

from dataclasses import replace

from dispatcher.model import Job, JobState


def _job() -> Job:
    return Job(
        id="job_0123456789abcdefghjk.0",
        webhook_id="wh_0123456789abcdefghjk",
        tenant_id="acme",
        event_type="a.b",
        stream="default",
        event_id="evt_0123456789abcdefghjk",
        state=JobState.QUEUED,
        attempt=0,
        stalls=0,
        created_at_ms=1000,
        payload=b"{}",
        waiting="rate_limit",
        reserved_ms=1500,
    )


def test_an_attempt_counts_ends_the_wait_and_joins_the_history() -> None:
    job = _job()
    entry = job.attempted(2000, 503, 12.345, "503 Service Unavailable")
    assert entry == [2000, 503, 12.3, "503 Service Unavailable", 0]
    assert job.history == [entry]
    assert (job.attempt, job.processed_at_ms, job.last_status, job.last_error) == (
        1,
        2000,
        503,
        "503 Service Unavailable",
    )
    assert (job.waiting, job.reserved_ms) == (None, None)
    assert job.state is JobState.QUEUED  # the outcome decides the state


def test_outcomes() -> None:
    job = _job()
    job.attempted(2000, 500, 1.0, "500")
    retried = replace(job, history=list(job.history))
    retried.retry(9000)
    assert (retried.state, retried.next_attempt_at_ms) == (JobState.SCHEDULED, 9000)

    retried.delivered(9500)
    assert (retried.state, retried.finished_at_ms, retried.next_attempt_at_ms) == (
        JobState.DELIVERED,
        9500,
        None,
    )

    dead = replace(job, next_attempt_at_ms=9000)
    dead.dead("max_attempts", 9600)
    assert (dead.state, dead.reason, dead.finished_at_ms, dead.next_attempt_at_ms) == (
        JobState.DEAD,
        "max_attempts",
        9600,
        None,
    )
    assert dead.last_error == "500"  # kept unless the death says why
    dead.dead("webhook_deleted", 9700, error="webhook wh_x was deleted")
    assert dead.last_error == "webhook wh_x was deleted"


def test_waits_without_an_attempt() -> None:
    job = _job()
    job.defer(3000, "max_in_flight", 2500)
    assert (job.state, job.next_attempt_at_ms, job.waiting, job.reserved_ms, job.attempt) == (
        JobState.SCHEDULED,
        3000,
        "max_in_flight",
        2500,
        0,
    )
    job.defer(None, "endpoint_capacity", None)
    assert (job.next_attempt_at_ms, job.waiting, job.reserved_ms) == (
        None,
        "endpoint_capacity",
        None,
    )

    parked = _job()
    parked.park(4000)
    assert (parked.state, parked.next_attempt_at_ms, parked.waiting, parked.reserved_ms) == (
        JobState.SCHEDULED,
        4000,
        "breaker",
        1500,  # a rate slot it holds stays its own
    )
