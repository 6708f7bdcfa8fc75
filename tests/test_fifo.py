"""Ordered delivery: a webhook with ``ordering: "fifo"`` attempts each lane's jobs one at a time,
in publish order, against a real Redis, real workers and a real HTTP target."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import orjson
import pytest

from dispatcher import Client, InvalidField, shapes
from dispatcher.queue.keys import Keys
from tests.helpers import Daemon, daemon_env, eventually, stop_daemons
from tests.lane_target import LaneTarget
from tests.target import Reply, Target

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

    from tests.conftest import WorkerHarness


async def _job_in(client: Client, job_id: str, *states: str) -> shapes.Job | None:
    job = await client.get_job(job_id)
    return job if job is not None and job["state"] in states else None


async def _publish(client: Client, n: int, key: str | None = None, start: int = 0) -> list[str]:
    ids = []
    for seq in range(start, start + n):
        answer = await client.publish("acme", "a.b", {"seq": seq, "key": key}, ordering_key=key)
        ids.append(answer["jobs"][0]["id"])
    return ids


def _seqs(target: Target) -> list[int]:
    return [orjson.loads(r.body)["seq"] for r in target.received]


async def test_ordering_is_a_webhook_field(client: Client, target: Target) -> None:
    """``ordering`` is "none" by default, "fifo" on request, changeable, and checked."""
    plain = await client.create_webhook("acme", target.url())
    assert plain["ordering"] == "none"
    hook = await client.create_webhook("acme", target.url(), ordering="fifo")
    assert (await client.get_webhook(hook["id"]))["ordering"] == "fifo"
    assert (await client.update_webhook(hook["id"], ordering="none"))["ordering"] == "none"
    with pytest.raises(InvalidField, match="ordering"):
        await client.create_webhook("acme", target.url(), ordering="lifo")
    with pytest.raises(InvalidField, match="ordering_key"):
        await client.publish("acme", "a.b", {}, ordering_key="two words")


async def test_only_the_head_of_a_lane_is_queued(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """Jobs behind a lane's head wait outside the stream and say ``waiting_for: "ordering"``;
    another key is another lane with its own head."""
    hook = await client.create_webhook("acme", target.url(), ordering="fifo")
    first, *behind = await _publish(client, 3)
    [other] = await _publish(client, 1, key="k")
    keys = Keys(prefix)
    assert await redis.xlen(keys.ready("default")) == 2  # the two heads
    lane = await redis.lrange(keys.lane(hook["id"]), 0, -1)
    assert lane == [job_id.encode() for job_id in (first, *behind)]
    assert await redis.lrange(keys.lane(hook["id"], "k"), 0, -1) == [other.encode()]
    for job_id in (first, other):
        job = await client.get_job(job_id)
        assert job is not None
        assert (job["state"], job["waiting_for"]) == ("queued", None)
    for job_id in behind:
        job = await client.get_job(job_id)
        assert job is not None
        assert (job["state"], job["waiting_for"]) == ("queued", "ordering")


async def test_a_failing_head_blocks_its_lane_until_delivered(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """A head that fails is retried with backoff while the jobs behind it wait: they arrive
    after it, in publish order."""
    target.script("/hook", Reply(500), Reply(500), Reply(200))
    await client.create_webhook("acme", target.url(), ordering="fifo")
    ids = await _publish(client, 5)
    await workers.start(max_attempts=5)
    await target.wait_for(7)
    for job_id in ids:
        await eventually(lambda job_id=job_id: _job_in(client, job_id, "delivered"))
    assert _seqs(target) == [0, 0, 0, 1, 2, 3, 4]
    assert target.peak["/hook"] == 1


async def test_a_dead_head_releases_its_lane_and_a_replay_goes_to_the_back(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """A dead-lettered head lets the next job go; replayed, dead jobs join the back of their
    lane in the order given, the first as head and the next behind it."""
    target.script("/hook", Reply(500))
    await client.create_webhook("acme", target.url(), ordering="fifo")
    ids = await _publish(client, 3)
    await workers.start(max_attempts=1)
    for job_id in ids:
        await eventually(lambda job_id=job_id: _job_in(client, job_id, "dead"))
    assert _seqs(target) == [0, 1, 2]
    await workers.stop()

    target.script("/hook", Reply(200))
    await client.replay([ids[2], ids[0]])
    behind = await client.get_job(ids[0])
    assert behind is not None
    assert (behind["state"], behind["waiting_for"]) == ("queued", "ordering")
    await workers.start(max_attempts=1)
    for job_id in (ids[2], ids[0]):
        await eventually(lambda job_id=job_id: _job_in(client, job_id, "delivered"))
    assert _seqs(target) == [0, 1, 2, 2, 0]


async def test_lanes_of_different_keys_do_not_wait_for_each_other(
    client: Client, workers: WorkerHarness
) -> None:
    """A lane blocked by a failing head holds back only its own jobs."""
    async with LaneTarget() as target:
        target.failing.add("a")
        await client.create_webhook("acme", target.url, ordering="fifo")
        blocked = await _publish(client, 2, key="a")
        flowing = await _publish(client, 3, key="b", start=10)
        await workers.start(max_attempts=50, backoff_base_s=0.2)
        for job_id in flowing:
            await eventually(lambda job_id=job_id: _job_in(client, job_id, "delivered"))
        assert target.delivered_order("b") == [10, 11, 12]
        assert {seq for seq, _ in target.arrivals["a"]} == {0}
        waiting = await client.get_job(blocked[1])
        assert waiting is not None
        assert (waiting["state"], waiting["waiting_for"]) == ("queued", "ordering")


async def test_a_deleted_webhooks_lane_drains_to_the_dlq(
    client: Client, target: Target, workers: WorkerHarness, redis: aioredis.Redis, prefix: str
) -> None:
    """Jobs waiting in the lanes of a deleted webhook are not stranded: each is dead-lettered
    in turn as it becomes its lane's head, and the lane is gone."""
    hook = await client.create_webhook("acme", target.url(), ordering="fifo")
    ids = await _publish(client, 3)
    await client.delete_webhook(hook["id"])
    await workers.start()
    for job_id in ids:
        await eventually(lambda job_id=job_id: _job_in(client, job_id, "dead"))
    assert await redis.exists(Keys(prefix).lane(hook["id"])) == 0
    assert target.count() == 0


def expected_order(
    target: LaneTarget, key: str | None, seqs: list[int], dead: set[tuple[str, int]]
) -> list[int]:
    """A lane's seqs as their first 2xx must arrive: publish order, dead jobs left out unless
    the target answered them 2xx (a worker killed or frozen after its 2xx, before settling it;
    the job taken over, at least once, then failing every retry until dead)."""
    answered = set(target.delivered_order(key))
    return [seq for seq in seqs if (key, seq) not in dead or seq in answered]


def stress_env(redis_url: str, prefix: str) -> dict[str, str]:
    """The daemons of the FIFO stress runs: 16 slots, 1 s attempts, a 2 s stall timeout and
    fast retries, 4 attempts."""
    return daemon_env(
        redis_url,
        prefix,
        delivery_concurrency="16",
        delivery_timeout_s="1",
        delivery_stall_timeout_s="2",
        delivery_backoff_base_s="0.01",
        delivery_backoff_cap_s="0.05",
        delivery_max_attempts="4",
    )


async def publish_lanes(
    client: Client,
    numbers: range,
    lanes: int,
    published: dict[str | None, list[int]],
    ids: list[str],
    seq_of: dict[str, tuple[str, int]],
) -> None:
    """Publish events ``numbers`` in one ``publish_many``, event n on lane ``k{n % lanes}`` of
    tenant acme, noting each lane's seqs, the job ids in order and each job's (lane, seq)."""
    batch = [
        {
            "tenant_id": "acme",
            "event_type": "a.b",
            "payload": {"seq": n, "key": f"k{n % lanes}"},
            "ordering_key": f"k{n % lanes}",
        }
        for n in numbers
    ]
    for n, answer in zip(numbers, await client.publish_many(batch), strict=True):
        assert not isinstance(answer, Exception)
        job_id = answer["jobs"][0]["id"]
        published[f"k{n % lanes}"].append(n)
        ids.append(job_id)
        seq_of[job_id] = (f"k{n % lanes}", n)


async def settled(client: Client, ids: list[str]) -> dict[str, str] | None:
    """Each job's state once every one is delivered or dead, else None."""
    states: dict[str, str] = {}
    for start in range(0, len(ids), 200):
        chunk = ids[start : start + 200]
        jobs = await asyncio.gather(*map(client.get_job, chunk))
        for job_id, job in zip(chunk, jobs, strict=True):
            if job is None or job["state"] not in {"delivered", "dead"}:
                return None
            states[job_id] = job["state"]
    return states


async def test_lanes_stay_ordered_across_processes_with_failures_and_a_sigkill(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """Two ``dispatcher run`` processes, a target failing 20% at random, one worker SIGKILLed
    mid-run: per lane never two requests at once, and first deliveries in publish order
    (dead jobs aside). FIFO_EVENTS=20000 runs a longer variant."""
    events = int(os.environ.get("FIFO_EVENTS", "1000"))
    lanes = 16
    env = stress_env(redis_url, prefix)
    async with LaneTarget(fail_rate=0.2) as target:
        await client.create_webhook("acme", target.url, ordering="fifo")
        steady = Daemon(env, logs_dir / "steady.log").start()
        victim: Daemon | None = Daemon(env, logs_dir / "victim.log").start()
        published: dict[str | None, list[int]] = {f"k{i}": [] for i in range(lanes)}
        ids: list[str] = []
        seq_of: dict[str, tuple[str, int]] = {}
        try:
            for start in range(0, events, 100):
                numbers = range(start, min(start + 100, events))
                await publish_lanes(client, numbers, lanes, published, ids, seq_of)
                if victim is not None and start >= events // 2:
                    await eventually(
                        lambda: sum(map(len, target.arrivals.values())) > events // 3,
                        timeout_s=60,
                    )
                    victim.kill()  # mid-run: it holds lane heads in flight
                    victim = None
            states = await eventually(lambda: settled(client, ids), timeout_s=120, interval_s=0.5)
        finally:
            await stop_daemons(victim, steady)
    dead = {seq_of[job_id] for job_id, state in states.items() if state == "dead"}
    for key, seqs in published.items():
        assert target.peak[key] == 1, f"lane {key}: {target.peak[key]} requests at once"
        assert target.delivered_order(key) == expected_order(target, key, seqs, dead), (
            f"lane {key} out of order"
        )
    arrived = sum(map(len, target.arrivals.values()))
    print(f"\nFIFO: {events} events on {lanes} lanes, {arrived} requests, {len(dead)} dead")
