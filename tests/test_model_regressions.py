"""The counterexamples the queue's model test (tests/test_model.py) found, shrunk and kept.

Each test replays one sequence of steps on the model's state machine; the machine checks
every invariant after each step and drains the queue at the end, exactly as in the model
test. The issue's finding each one showed is named in its docstring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.test_model import QueueMachine, model_redis

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
