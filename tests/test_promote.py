"""The promoter against records it cannot read: one bad record never wedges a queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from dispatcher.queue import delays
from dispatcher.queue.keys import Keys
from tests.helpers import stream_entries

if TYPE_CHECKING:

    import redis.asyncio as aioredis

    from dispatcher import Client
    from dispatcher.queue.store import Store


@pytest.mark.parametrize(
    "bad_record",
    [b"not json\npayload", b"{}\npayload", b'{"w": 7}\npayload', b"@default 1-1", b"[1,2]\n{}"],
)
async def test_a_bad_scheduled_record_is_dead_lettered_and_the_rest_promoted_once(
    client: Client, store: Store, redis: aioredis.Redis, prefix: str, bad_record: bytes
) -> None:
    """A scheduled job whose record cannot be read goes to the DLQ as malformed; the jobs around
    it are promoted exactly once (before: the script failed after promoting the ones ahead of
    it, so they were sent again on every tick and the ones behind it never went)."""
    keys = Keys(prefix)
    await client.create_webhook("acme", "https://hooks.example.com/x")
    later = datetime.now(UTC) + timedelta(hours=1)
    ids = [
        (await client.publish("acme", "a.b", {"n": n}, deliver_at=later))["jobs"][0]["id"]
        for n in range(3)
    ]
    # All three due now, the middle one with a record nothing can read.
    await redis.zadd(keys.delayed("default"), {job_id: n for n, job_id in enumerate(ids)})
    await redis.hset(keys.jobs, ids[1], bad_record)

    first = await delays.promote_due(store, "default")
    assert (first.moved, first.malformed, first.orphans) == (2, [ids[1]], [])
    again = await delays.promote_due(store, "default")
    assert (again.moved, again.malformed) == (0, [])

    entries = await stream_entries(redis, keys.ready("default"))
    assert sorted(fields[b"j"].decode() for _, fields in entries) == sorted([ids[0], ids[2]])
    assert await redis.zcard(keys.delayed("default")) == 0
    [(_, dead)] = await stream_entries(redis, keys.dlq)
    assert dead[b"r"] == b"malformed"
    assert ids[1].encode() in dead[b"raw"]
    for job_id in (ids[0], ids[2]):
        job = await client.get_job(job_id)
        assert job is not None
        assert job["state"] == "queued"
