"""A stateful model of FIFO lanes: publishes on three lanes (repeated with an idempotency key),
claims settled as delivered, retried or dead, workers that die and are taken over (their late
outcomes refused), retries promoted, dead jobs replayed and delivered ones retried, in any
order; checked against a list per lane of its unfinished jobs."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    rule,
)

from dispatcher.model import JobState
from dispatcher.queue import delays, resend, streams
from dispatcher.queue.keys import Keys
from tests.helpers import settlement
from tests.machines import ClientMachine, run_machine

if TYPE_CHECKING:
    from dispatcher.queue.store import Store
    from dispatcher.queue.streams import Claim, Settlement

KEYS = (None, "a", "b")
STATES = {"D": JobState.DELIVERED, "R": JobState.SCHEDULED, "X": JobState.DEAD}


class LaneMachine(ClientMachine):
    def __init__(self) -> None:
        super().__init__()
        self.keys = Keys(self.prefix)
        self.hook = ""
        self.lanes: dict[str | None, list[str]] = {key: [] for key in KEYS}  # unfinished jobs
        self.lane_of: dict[str, str | None] = {}
        self.dead: list[str] = []
        self.delivered: list[str] = []  # their payloads kept: a retry sends them again
        self.held: list[tuple[str, Claim]] = []  # (consumer, claim) not settled yet
        self.workers = 0

    @property
    def store(self) -> Store:
        assert self.client is not None
        return self.client.store

    @initialize()
    def set_up(self) -> None:
        client = self.open_client()
        self.run(streams.ensure_group(self.store, "default"))
        hook = self.run(
            client.create_webhook("acme", "https://hooks.example.com/x", ordering="fifo")
        )
        self.hook = hook["id"]

    @rule(key=st.sampled_from(KEYS))
    def publish(self, key: str | None) -> None:
        assert self.client is not None
        answer = self.run(self.client.publish("acme", "a.b", {"k": key}, ordering_key=key))
        job_id = answer["jobs"][0]["id"]
        self.lanes[key].append(job_id)
        self.lane_of[job_id] = key

    @rule()
    def claim(self) -> None:
        """A new worker claims what is ready (and may die holding it)."""
        self.workers += 1
        consumer = f"w{self.workers}"
        claims, _ = self.run(
            streams.wait_new(self.store, ("default",), consumer, count=10, block_ms=1)
        )
        self.held += [(consumer, claim) for claim in claims]

    @rule(kind=st.sampled_from(["D", "R", "X"]))
    def work(self, kind: str) -> None:
        """A worker claims what is ready and settles it all with one outcome."""
        self.workers += 1
        consumer = f"w{self.workers}"
        claims, _ = self.run(
            streams.wait_new(self.store, ("default",), consumer, count=10, block_ms=1)
        )
        if not claims:
            return
        outcomes = [self._settlement(claim, kind) for claim in claims]
        assert self.run(streams.settle(self.store, consumer, outcomes)) == []
        if kind != "R":
            for claim in claims:
                self._finished(claim.job_id, dead=kind == "X")

    @rule()
    def take_over(self) -> None:
        """A new worker takes over every pending entry (their workers died or froze)."""
        self.workers += 1
        consumer = f"w{self.workers}"
        page = self.run(
            streams.reclaim_page(
                self.store, "default", consumer, min_idle_ms=0, cursor="0-0", count=100
            )
        )
        self.held += [(consumer, claim) for claim in page.claims]
        for job_id in page.poisoned:
            self._finished(job_id, dead=True)

    @rule(kind=st.sampled_from(["D", "R", "X"]), which=st.integers(0, 5))
    def settle(self, kind: str, which: int) -> None:
        """A worker settles one claim it holds: current, or stale (refused, nothing moves)."""
        if not self.held:
            return
        consumer, claim = self.held.pop(which % len(self.held))
        stale = self.run(streams.settle(self.store, consumer, [self._settlement(claim, kind)]))
        if stale:
            return
        assert claim.job_id in self.lanes[self.lane_of[claim.job_id]]
        if kind != "R":
            self._finished(claim.job_id, dead=kind == "X")

    @rule()
    def promote(self) -> None:
        delayed = self.keys.delayed("default")
        for job_id in self.run(self.store.redis.zrange(delayed, 0, -1)):
            self.run(self.store.redis.zadd(delayed, {job_id: 0}))
        self.run(delays.promote_due(self.store, "default"))

    @rule(which=st.integers(0, 5))
    def replay(self, which: int) -> None:
        if not self.dead:
            return
        assert self.client is not None
        job_id = self.dead.pop(which % len(self.dead))
        self.run(self.client.replay([job_id]))
        self.lanes[self.lane_of[job_id]].append(job_id)

    @rule(which=st.integers(0, 5))
    def retry_delivered(self, which: int) -> None:
        """A delivered job is retried (POST /v1/jobs/{id}/retry): the back of its lane."""
        if not self.delivered:
            return
        job_id = self.delivered.pop(which % len(self.delivered))
        self.run(resend.retry_job(self.store, job_id, payload_retention_s=3600))
        self.lanes[self.lane_of[job_id]].append(job_id)

    @rule(key=st.sampled_from(KEYS))
    def publish_again(self, key: str | None) -> None:
        """A publish repeated with its idempotency key adds no job to the lane."""
        assert self.client is not None
        for _ in range(2):
            answer = self.run(
                self.client.publish(
                    "acme",
                    "a.b",
                    {"k": key},
                    ordering_key=key,
                    idempotency_key=f"i{key}{len(self.lane_of)}",
                )
            )
        job_id = answer["jobs"][0]["id"]
        self.lanes[key].append(job_id)
        self.lane_of[job_id] = key

    def _finished(self, job_id: str, *, dead: bool) -> None:
        lane = self.lanes[self.lane_of[job_id]]
        assert lane[0] == job_id, "only a lane's head is ever delivered or dead"
        lane.pop(0)
        (self.dead if dead else self.delivered).append(job_id)

    def _settlement(self, claim: Claim, kind: str) -> Settlement:
        outcome: Settlement = self.run(
            settlement(self.store, claim, kind, STATES[kind], due_in_ms=60_000)
        )
        if kind == "D":  # kept 1 h for a retry, as a worker with the default retention
            outcome = dataclasses.replace(outcome, reason="3600000")
        return outcome

    @invariant()
    def lanes_match_the_model(self) -> None:
        if self.client is None:
            return
        redis = self.store.redis
        entries = self.run(redis.xrange(self.keys.ready("default")))
        queued = [fields[b"j"].decode() for _, fields in entries]
        delayed = [m.decode() for m in self.run(redis.zrange(self.keys.delayed("default"), 0, -1))]
        for key, expected in self.lanes.items():
            stored = self.run(redis.lrange(self.keys.lane(self.hook, key), 0, -1))
            assert [i.decode() for i in stored] == expected
            out = [job_id for job_id in queued + delayed if self.lane_of[job_id] == key]
            assert out == expected[:1], f"lane {key}: {out} queued, expected its head only"
        behind = sum(max(len(lane) - 1, 0) for lane in self.lanes.values())
        counted = self.run(redis.hget(self.keys.lanes_waiting, self.hook))
        assert int(counted or 0) == behind, "the count of jobs behind heads is exact"
        heads = self.run(redis.hgetall(self.keys.lane_heads))
        expected_heads = {
            lane[0]: self.keys.lane(self.hook, key) for key, lane in self.lanes.items() if lane
        }
        assert {k.decode(): v.decode() for k, v in heads.items()} == expected_heads
        since = self.run(redis.zrange(self.keys.lane_since, 0, -1))
        assert sorted(m.decode() for m in since) == sorted(expected_heads)


def test_lanes_match_their_model(redis_url: str) -> None:
    """Whatever the sequence of publishes (repeated ones too), claims, deaths, takeovers,
    outcomes (late ones included), promotions, replays and retries of delivered jobs, each lane
    holds its unfinished jobs in publish order, exactly its head is queued and indexed, and the
    jobs behind heads are counted exactly."""
    run_machine(LaneMachine, redis_url, examples=18, steps=15)
