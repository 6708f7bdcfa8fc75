"""dispatcher on Sentinel-managed Redis: the master is SIGKILLed while events flow.

Replication is asynchronous, so jobs accepted in the last moments before the kill may never
have reached the replica: the test counts them and prints how many, and asserts what failover
does promise: delivery resumes on the promoted replica, and every job accepted after the
failover is delivered.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from dispatcher import Client
from dispatcher.errors import DispatcherError
from tests.helpers import (
    Daemon,
    SentinelServers,
    daemon_env,
    eventually,
    log_events,
    stop_daemons,
)
from tests.target import Reply

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.target import Target


@pytest.fixture
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelServers]:
    servers = SentinelServers(tmp_path_factory.mktemp("sentinel"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


class _Publisher:
    """Publishes one event every few ms, noting when each accepted job was accepted."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.accepted: list[tuple[float, str]] = []  # (monotonic time of the answer, job id)
        self.refused = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                answer = await self.client.publish("acme", "a.b", {"n": n})
            except DispatcherError:
                self.refused += 1  # Redis unavailable during the failover: not accepted
                await asyncio.sleep(0.05)
                continue
            self.accepted.append((time.monotonic(), answer["jobs"][0]["id"]))
            await asyncio.sleep(0.01)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_delivery_resumes_on_the_promoted_replica(
    sentinel: SentinelServers, prefix: str, target: Target, logs_dir: Path
) -> None:
    """After the master is SIGKILLed, the sentinels promote the replica, the daemon follows it,
    and every job accepted after the failover is delivered."""
    target.script("/hook", Reply(200))
    env = daemon_env(sentinel.url, prefix, delivery_timeout_s="2", delivery_stall_timeout_s="3")
    async with Client.from_url(sentinel.url, prefix=prefix) as client:
        await client.create_webhook("acme", target.url())
        daemon = Daemon(env, logs_dir / "daemon.log").start()
        publisher = _Publisher(client)
        task = asyncio.create_task(publisher.run())
        try:
            await target.wait_for(50, timeout_s=30)  # events flow through the first master
            [connected] = log_events(daemon, "redis.connected")
            assert connected["mode"] == "sentinel"
            old_master = sentinel.master
            sentinel.kill(old_master)
            killed_at = time.monotonic()
            promoted = await eventually(
                lambda: (port := sentinel.master_port()) != old_master and port,
                timeout_s=60,
                interval_s=0.2,
                what="the sentinels promoting the replica",
            )
            assert promoted == sentinel.replica
            failed_over_at = time.monotonic()
            await eventually(
                lambda: len([t for t, _ in publisher.accepted if t > failed_over_at]) >= 100,
                timeout_s=60,
                what="100 jobs accepted by the new master",
            )
            publisher.stop.set()
            await task
            after = [job for t, job in publisher.accepted if t > failed_over_at]
            before = [job for t, job in publisher.accepted if t <= killed_at]
            delivered = await eventually(
                lambda: _all_arrived(target, after), timeout_s=60, what="post-failover jobs"
            )
            # Jobs accepted before the kill that the replica had: delivered (or redelivered)
            # by now or soon; the others were lost with the master.
            await eventually(lambda: _settled(client, before), timeout_s=30, interval_s=0.5)
            lost = [job for job in before if job not in _arrived(target)]
            unknown = [job for job in lost if await client.get_job(job) is None]
            print(
                f"\nsentinel failover: {len(before)} jobs accepted before the kill, "
                f"{len(lost)} of them lost ({len(unknown)} unknown to the new master), "
                f"{len(after)} accepted after the failover, all delivered ({delivered}); "
                f"{publisher.refused} publishes refused during the failover, "
                f"failover took {failed_over_at - killed_at:.1f} s"
            )
            assert set(after) <= _arrived(target)
            assert set(unknown) == set(lost), "a job the new master knows is never lost"
        finally:
            publisher.stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await stop_daemons(daemon)


def _arrived(target: Target) -> set[str]:
    return {r.headers["webhook-id"] for r in target.received}


def _all_arrived(target: Target, job_ids: list[str]) -> int | None:
    arrived = _arrived(target)
    return len(job_ids) if all(job in arrived for job in job_ids) else None


async def _settled(client: Client, job_ids: list[str]) -> bool:
    """Every job is delivered or unknown: none is still waiting to be sent."""
    for job_id in job_ids:
        job = await client.get_job(job_id)
        if job is not None and job["state"] != "delivered":
            return False
    return True
