"""The short locator end to end: jobs whose ids were chosen on a clock far from Redis's, or
whose entries got a large sequence number, are found, and never taken for orphans."""

from __future__ import annotations

import time
import types
from typing import TYPE_CHECKING

import pytest

from dispatcher import Client, ids
from dispatcher.queue import codec, delays
from dispatcher.queue.keys import Keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

URL = "http://127.0.0.1:9/hook"
DAY_NS = 86_400 * 10**9


@pytest.mark.parametrize("skew_ns", [-DAY_NS, 0, DAY_NS])
async def test_jobs_of_a_skewed_clock_are_read_and_not_orphans(
    client: Client,
    redis: aioredis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    skew_ns: int,
) -> None:
    """With the publisher's clock a day behind or ahead of Redis's, and the default stream's
    last entry id ahead of Redis's time (sequence numbers past 1,296 in one ms), each queued
    job reads back queued at its priority, the orphan scan leaves every one alone, and one
    whose entry is deleted is dead-lettered as entry_missing."""
    keys = Keys(prefix)
    await client.create_webhook("acme", URL)
    await client.publish("acme", "a.b", {})  # the default stream exists
    redis_ms = int((await redis.time())[0]) * 1000
    await redis.xadd(keys.ready("default"), {"x": "y"}, id=f"{redis_ms + 60_000}-5000")
    monkeypatch.setattr(
        ids, "time", types.SimpleNamespace(time_ns=lambda: time.time_ns() + skew_ns)
    )
    jobs = {}
    for priority in ("high", "normal", "low", "normal"):
        answer = await client.publish("acme", "a.b", {"p": priority}, priority=priority)
        jobs[answer["jobs"][0]["id"]] = priority
    for job_id, priority in jobs.items():
        job = await client.get_job(job_id)
        assert job is not None
        assert (job["state"], job["priority"]) == ("queued", priority)
    sids = []
    for job_id in jobs:
        raw = await redis.hget(keys.jobs, job_id)
        assert isinstance(raw, bytes)
        sids.append(codec.parse_locator(raw, job_id)[1])
    assert int(sids[-1].partition("-")[2]) > 1296  # the case this test is about
    found = await delays.find_orphans(client.store, cursor="0", count=1000)
    assert (found.dead, found.requeued) == ([], [])
    victim = next(iter(jobs))
    raw = await redis.hget(keys.jobs, victim)
    assert isinstance(raw, bytes)
    stream, sid = codec.parse_locator(raw, victim)
    assert await redis.xdel(keys.ready(stream), sid) == 1
    found = await delays.find_orphans(client.store, cursor="0", count=1000)
    assert (found.dead, found.requeued) == ([victim], [])
