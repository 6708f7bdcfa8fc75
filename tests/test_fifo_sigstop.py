"""Ordered delivery when the process holding a lane's head freezes (SIGSTOP) past the stall
timeout: real ``dispatcher run`` processes, a real target, a real Redis."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from tests.helpers import Daemon, daemon_env, eventually, log_events, stop_daemons
from tests.lane_target import LaneTarget

if TYPE_CHECKING:
    from pathlib import Path

    from dispatcher import Client


async def _publish(client: Client, seqs: range) -> list[str]:
    ids = []
    for seq in seqs:
        payload = {"seq": seq, "key": "k"}
        answer = await client.publish("acme", "a.b", payload, ordering_key="k")
        ids.append(answer["jobs"][0]["id"])
    return ids


async def _all_delivered(client: Client, ids: list[str]) -> bool:
    for job_id in ids:
        job = await client.get_job(job_id)
        if job is None or job["state"] != "delivered":
            return False
    return True


async def test_a_frozen_heads_late_outcome_is_fenced_and_the_lane_moves_on(
    client: Client, redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A process frozen while attempting a lane's head is taken over after the stall timeout:
    another process delivers the head and the jobs behind it; resumed, the frozen one's
    outcome is refused as stale and moves nothing, so the lane stays in order with never two
    of its requests at once."""
    env = daemon_env(
        redis_url,
        prefix,
        delivery_timeout_s="1.5",
        delivery_stall_timeout_s="2",
        delivery_backoff_base_s="0.05",
        delivery_backoff_cap_s="0.2",
        delivery_max_attempts="100",
    )
    async with LaneTarget() as target:
        await client.create_webhook("acme", target.url, ordering="fifo")
        target.delays[0] = 1.0  # the head's first attempt is in flight for a second
        ids = await _publish(client, range(2))
        frozen = Daemon(env, logs_dir / "frozen.log").start()
        other: Daemon | None = None
        try:
            await eventually(lambda: target.active["k"] == 1, timeout_s=20, what="head sent")
            frozen.signal(signal.SIGSTOP)
            other = Daemon(env, logs_dir / "other.log").start()
            await eventually(lambda: _all_delivered(client, ids), timeout_s=20)
            assert log_events(other, "job.reclaimed")
            target.failing.add("k")  # the next head fails and keeps the lane blocked
            ids += await _publish(client, range(2, 5))
            await eventually(lambda: len(target.arrivals["k"]) > 4, what="the next head tried")
            frozen.signal(signal.SIGCONT)
            await eventually(
                lambda: log_events(frozen, "job.stale_result_rejected"), what="a stale outcome"
            )
            target.failing.clear()
            await eventually(lambda: _all_delivered(client, ids), timeout_s=20)
        finally:
            await stop_daemons(frozen, other)
    assert target.delivered_order("k") == [0, 1, 2, 3, 4]
    assert target.peak["k"] == 1
    seqs = [seq for seq, _ in target.arrivals["k"]]
    assert seqs[:3] == [0, 0, 1]  # the frozen attempt, then the takeover's
    assert seqs.count(0) == 2  # the refused outcome scheduled no retry
