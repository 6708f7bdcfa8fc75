"""The counterexamples the queue's model tests (tests/test_model.py, and the traffic machine
of tests/test_model_traffic.py) found, shrunk and kept.

Each test replays one sequence of steps on a model's state machine; the machine checks every
invariant after each step and drains the queue at the end, exactly as in the model test. The
issue's finding each one showed is named in its docstring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.test_model import QueueMachine, model_redis
from tests.test_model_traffic import STREAMS, TrafficMachine, traffic_redis

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.helpers import RedisServer


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from model_redis(tmp_path_factory)


@pytest.fixture
def state(model_server: RedisServer) -> Iterator[QueueMachine]:
    machine = QueueMachine()
    machine.set_up()
    machine.consistent()
    yield machine
    machine.teardown()


def test_late_outcome_after_reload_to_an_older_snapshot(state: QueueMachine) -> None:
    """Redis reloaded with the publish but not the claim: the worker's late outcome of the
    never-attempted job is refused as stale, and its other outcomes are still written
    (issue 13, finding 1)."""
    state.publish(tenant="a", key=None, priority="normal", scheduled=False)
    state.consistent()
    state.take_snapshot()
    state.consistent()
    state.claim(w=0, budget=1)
    state.consistent()
    state.attempt(w=0, pick=0, status=200, every=True)
    state.consistent()
    state.reload_older_snapshot()
    state.consistent()
    state.settle(w=0)
    state.consistent()


def test_late_outcome_after_the_entry_was_deleted_and_reclaimed(state: QueueMachine) -> None:
    """A never-attempted job's entry deleted while in flight, then reported missing by another
    worker's reclaim: the first worker's outcome is refused as stale, not a script error
    (issue 13, finding 1)."""
    state.publish(tenant="a", key=None, priority="normal", scheduled=False)
    state.consistent()
    state.claim(w=0, budget=1)
    state.consistent()
    state.delete_entry(pick=0)
    state.consistent()
    state.reclaim(w=1)
    state.consistent()
    state.attempt(w=0, pick=0, status=200, every=True)
    state.consistent()
    state.settle(w=0)
    state.consistent()


def test_current_claims_past_untracked_pending_entries(state: QueueMachine) -> None:
    """Crashed deliveries leave more pending entries than the fence's margin between a batch's
    claims: every current claim is still fenced as current and its outcome written
    (issue 13, finding 2)."""
    state.publish_burst()
    state.consistent()
    state.claim(w=0, budget=200)
    state.consistent()
    state.crash(w=0, pick=1, count=66)
    state.consistent()
    state.attempt(w=0, pick=0, status=200, every=True)
    state.consistent()
    state.settle(w=0)
    state.consistent()


def test_idempotency_keys_of_tenants_with_colons(state: QueueMachine) -> None:
    """Tenant ``org:1`` with key ``k`` and tenant ``org`` with key ``1:k`` are two events,
    each answered with its own jobs (issue 13, finding 3)."""
    state.publish(tenant="org:1", key="k", priority="normal", scheduled=False)
    state.consistent()
    state.publish(tenant="org", key="1:k", priority="normal", scheduled=False)
    state.consistent()


def test_replay_of_an_entry_missing_job_is_refused(state: QueueMachine) -> None:
    """A job dead-lettered as entry_missing has no payload: replaying it is refused and changes
    nothing, instead of looping through the DLQ (issue 13, finding 4)."""
    state.publish(tenant="a", key=None, priority="normal", scheduled=False)
    state.consistent()
    state.delete_entry(pick=0)
    state.consistent()
    state.orphan_sweep()
    state.consistent()
    state.replay_one(pick=0)
    state.consistent()
    state.replay_all()
    state.consistent()


def test_idempotency_keys_of_tenants_with_colons_as_shrunk(state: QueueMachine) -> None:
    """Tenant ``a:b`` with key ``k`` and tenant ``a`` with key ``b:k`` (the model test's own
    shrunk counterexample) are two events (issue 13, finding 3)."""
    state.publish_burst()
    state.consistent()
    state.publish(tenant="a:b", key="k", priority="normal", scheduled=False)
    state.consistent()
    state.publish(tenant="a", key="b:k", priority="normal", scheduled=False)
    state.consistent()


# --- the traffic machine (tests/test_model_traffic.py) -------------------------------------------


@pytest.fixture(scope="module")
def traffic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from traffic_redis(tmp_path_factory)


@pytest.fixture
def traffic(traffic_server: RedisServer) -> Iterator[TrafficMachine]:
    machine = TrafficMachine()
    machine.set_up()
    machine.holds()
    yield machine
    machine.teardown()


def test_a_reclaim_pass_leaves_the_jobs_its_worker_holds(traffic: TrafficMachine) -> None:
    """A job waiting in a live worker's inbox past the stall timeout is neither taken over again
    by that worker's reclaim pass nor counted as a stall (issue 14, finding 1)."""
    traffic.publish(tenant="one", n=1)
    traffic.holds()
    traffic.read(w=0)
    traffic.holds()
    traffic.time_passes()
    traffic.holds()
    traffic.reclaim(w=0)
    traffic.holds()


def test_a_paused_queue_keeps_a_dead_workers_jobs_until_resume(traffic: TrafficMachine) -> None:
    """A frozen worker's stalled jobs are not handed to a survivor's lanes while their queue is
    paused, and go out after resume (issue 14, finding 7)."""
    traffic.publish(tenant="free", n=2)
    traffic.holds()
    traffic.read(w=0)
    traffic.holds()
    traffic.freeze(w=0)
    traffic.holds()
    traffic.time_passes()
    traffic.holds()
    traffic.pause_or_resume(pause=True)
    traffic.holds()
    traffic.reclaim(w=1)
    traffic.holds()
    assert not traffic.held[1], "a paused queue's jobs were handed to lanes"
    traffic.pause_or_resume(pause=False)
    traffic.holds()
    traffic.reclaim(w=1)
    traffic.holds()
    assert len(traffic.held[1]) == 2, "after resume, the survivor takes the jobs over"


def test_a_late_outcome_keeps_the_lease_of_the_worker_that_took_over(
    traffic: TrafficMachine,
) -> None:
    """A frozen worker's outcome written after another worker took its job over (and leased it
    under ``max_in_flight`` 1) leaves the new holder's lease in place, so no third attempt
    starts beside it (issue 14, finding 3)."""
    traffic.publish(tenant="one", n=1)
    traffic.holds()
    traffic.read(w=0)
    traffic.holds()
    traffic.start(w=0, pick=0, waited=False)
    traffic.holds()
    traffic.freeze(w=0)
    traffic.holds()
    traffic.time_passes()
    traffic.holds()
    traffic.reclaim(w=1)
    traffic.holds()
    traffic.start(w=0, pick=0, waited=False)
    traffic.holds()
    traffic.thaw(status=200)
    traffic.holds()
    traffic.settle(w=0)
    traffic.holds()


def test_a_lease_run_out_in_the_inbox_is_taken_again_at_the_attempt(
    traffic: TrafficMachine,
) -> None:
    """A job admitted under ``max_in_flight`` 1 that waited for a lane until its lease ran out
    does not start beside the job another worker admitted meanwhile (issue 14, finding 3)."""
    traffic.publish(tenant="one", n=1)
    traffic.holds()
    traffic.read(w=0)
    traffic.holds()
    traffic.time_passes()
    traffic.holds()
    traffic.publish(tenant="one", n=1)
    traffic.holds()
    traffic.read(w=1)
    traffic.holds()
    traffic.start(w=1, pick=0, waited=False)
    traffic.holds()
    traffic.start(w=0, pick=0, waited=True)
    traffic.holds()


def test_a_thawed_workers_stalled_claims_may_still_be_taken_over(traffic: TrafficMachine) -> None:
    """A worker frozen past the stall timeout holds, when it thaws, claims whose entries are
    idle past it until its reclaim loop keeps them fresh: another worker's reclaim pass in that
    moment takes the job over (as it would a moment before the thaw), and the thawed worker's
    late attempt neither starts beside the new holder's under ``max_in_flight`` 1 nor settles
    it (the model's own counterexample, a finding of its oracle: issue 17)."""
    traffic.publish(tenant="one", n=1)
    traffic.holds()
    traffic.peer_dies(w=0, full=False, pause=True)
    traffic.holds()
    traffic.pause_or_resume(pause=False)
    traffic.holds()
    traffic.thaw(status=200)
    traffic.holds()
    traffic.reclaim(w=0)
    traffic.holds()
    assert len(traffic.held[0]) == 1, "the survivor took the stalled job over"
    traffic.start(w=1, pick=0, waited=False)
    traffic.holds()
    assert not traffic.started[1], "the thawed worker's lease, lost, was renewed at its attempt"


def test_a_late_outcome_keeps_the_lease_of_the_job_its_worker_took_back(
    traffic: TrafficMachine,
) -> None:
    """An outcome written after its own worker took the job's entry back (its settler held up
    past the stall timeout, as by a Redis outage) is stale, and leaves the lease of the
    worker's new attempt in place under ``max_in_flight`` 1 (issue 17)."""
    traffic.publish(tenant="one", n=1)
    traffic.holds()
    traffic.read(w=0)
    traffic.holds()
    traffic.start(w=0, pick=0, waited=False)
    traffic.holds()
    traffic.finish(w=0, pick=0, status=200, crash=False)
    traffic.holds()
    traffic.time_passes()
    traffic.holds()
    traffic.reclaim(w=0)
    traffic.holds()
    traffic.start(w=0, pick=0, waited=False)
    traffic.holds()
    traffic.settle(w=0)
    traffic.holds()


def _backoff_passes(traffic: TrafficMachine) -> None:
    """Every delayed job comes due (a retry's backoff passed)."""
    redis = traffic.db.redis
    for stream in STREAMS:
        key = traffic.db.keys.delayed(stream)
        members = traffic.run(redis.zrange(key, 0, -1))
        if members:
            traffic.run(redis.zadd(key, dict.fromkeys(members, 1), xx=True))


def test_a_late_outcome_keeps_the_lease_of_the_jobs_retry_its_worker_took(
    traffic: TrafficMachine,
) -> None:
    """A frozen worker's outcome, written after another worker took the job over and failed it
    and the thawed worker claimed the retry, leaves the lease of the retry's attempt in place
    under ``max_in_flight`` 1 (issue 17)."""
    traffic.publish(tenant="one", n=1)
    traffic.holds()
    traffic.read(w=0)
    traffic.holds()
    traffic.start(w=0, pick=0, waited=False)
    traffic.holds()
    traffic.freeze(w=0)
    traffic.holds()
    traffic.time_passes()
    traffic.holds()
    traffic.reclaim(w=1)
    traffic.holds()
    traffic.start(w=1, pick=0, waited=False)
    traffic.holds()
    traffic.finish(w=1, pick=0, status=500, crash=False)
    traffic.holds()
    traffic.settle(w=1)
    traffic.holds()
    traffic.thaw(status=200)
    traffic.holds()
    _backoff_passes(traffic)
    traffic.promote_and_tick()
    traffic.holds()
    traffic.read(w=0)
    traffic.holds()
    traffic.start(w=0, pick=0, waited=False)
    traffic.holds()
    assert traffic.started[0], "the thawed worker started the job's retry"
    traffic.settle(w=0)
    traffic.holds()


def test_a_stale_claim_does_not_start_beside_its_workers_new_claim_of_the_job(
    traffic: TrafficMachine,
) -> None:
    """A worker that thawed with a job in its inbox, lost it to a takeover and took it back
    holds two claims of the job under one lease member: only the current one starts an attempt
    under ``max_in_flight`` 1 (issue 17)."""
    traffic.publish(tenant="one", n=1)
    traffic.holds()
    traffic.read(w=1)
    traffic.holds()
    traffic.freeze(w=1)
    traffic.holds()
    traffic.time_passes()
    traffic.holds()
    traffic.thaw(status=200)
    traffic.holds()
    traffic.reclaim(w=0)
    traffic.holds()
    traffic.freeze(w=0)
    traffic.holds()
    traffic.time_passes()
    traffic.holds()
    traffic.reclaim(w=1)
    traffic.holds()
    traffic.start(w=1, pick=0, waited=False)
    traffic.holds()
    traffic.start(w=1, pick=0, waited=False)
    traffic.holds()
    assert len(traffic.started[1]) == 1, "the current claim started its attempt"
