"""The DLQ handlers do bounded work: no payload is read to list or count, and a large replay or
purge does one page inline, then goes on as a background operation that survives its driver."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import pytest

from dispatcher import NotReplayable
from dispatcher.operations import Runner, begin
from dispatcher.queue import dlq, dlq_ops
from dispatcher.queue import operations as ops
from dispatcher.queue.keys import Keys
from tests.admin_api import Api, start_api
from tests.helpers import eventually, hash_len, seed_dead_jobs, stream_entries

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis

    from dispatcher import Client

BIG_PAYLOAD = b'{"blob":"' + b"x" * 60_000 + b'"}'
MANY = 2 * dlq.PAGE + 500  # more than two pages


@pytest.fixture
async def api(client: Client) -> AsyncIterator[Api]:
    client.dlq_retention_s = 0.0
    _app, served = await start_api(client)
    yield served
    await served.close()


async def _bytes_sent(redis: aioredis.Redis) -> int:
    info = await redis.info("stats")
    return int(info["total_net_output_bytes"])


async def test_listing_and_counting_the_dlq_read_no_payload(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Listing a page of the DLQ and counting what a purge would delete send a few bytes per
    entry from Redis, however large the dead jobs' payloads."""
    n = 200
    await seed_dead_jobs(client, redis, prefix, n, BIG_PAYLOAD)
    payload_bytes = n * len(BIG_PAYLOAD)
    before = await _bytes_sent(redis)
    refused = await api.call("DELETE", "/v1/dlq")
    assert (refused.status, refused.body["would_purge"]) == (409, n)
    listed = await api.call("GET", "/v1/dlq", params={"limit": "100", "tenant_id": "acme"})
    assert len(listed.body["items"]) == 100
    assert listed.body["items"][0]["last_error"] == "500 down"
    assert await _bytes_sent(redis) - before < payload_bytes // 20


async def test_would_purge_counts_exactly_the_entries_before_the_cutoff(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """would_purge counts exactly the entries older than the cutoff, over several counting
    calls, and none younger."""
    old = dlq.COUNT_PAGE + 7
    await seed_dead_jobs(client, redis, prefix, old, entry_ids=[f"1000-{i}" for i in range(old)])
    await seed_dead_jobs(client, redis, prefix, 3)  # dead now
    hour = await api.call("DELETE", "/v1/dlq", params={"older_than_s": "3600"})
    assert (hour.status, hour.body["would_purge"]) == (409, old)
    everything = await api.call("DELETE", "/v1/dlq", params={"older_than_s": "0"})
    assert everything.body["would_purge"] == old + 3


async def test_large_replay_answers_202_and_finishes_in_the_background(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Replay all over more than a page replays the first page inline, answers 202 with an
    operation, and the operation replays the rest; its progress is readable by id."""
    ids = await seed_dead_jobs(client, redis, prefix, MANY)
    answer = await api.call("POST", "/v1/dlq/replay", json={"all": True})
    assert answer.status == 202
    assert answer.body["replayed"] == dlq.PAGE
    op = answer.body["operation"]
    assert (op["kind"], op["state"]) == ("replay", "running")
    assert answer.headers["Location"] == f"/v1/operations/{op['id']}"

    async def finished() -> dict[str, Any] | None:
        got = await api.call("GET", f"/v1/operations/{op['id']}")
        return got.body if got.body["state"] != "running" else None

    final = await eventually(finished, what="the replay operation finished")
    assert final["state"] == "succeeded"
    assert (final["done"], final["total"], final["replayed"]) == (MANY, MANY, MANY)
    assert (final["skipped"], final["error"]) == (0, None)
    assert await stream_entries(redis, Keys(prefix).dlq) == []
    ready = await stream_entries(redis, Keys(prefix).ready("default"))
    assert sorted(f[b"j"].decode() for _sid, f in ready) == sorted(ids)
    assert (await api.call("GET", "/v1/operations/op_00000000000000000000")).status == 404
    assert (await api.call("GET", "/v1/operations/nonsense")).status == 404


async def test_large_purge_answers_202_and_finishes_in_the_background(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A confirmed purge of more than a page deletes the first page inline, answers 202, and
    the operation deletes the rest with their records."""
    await seed_dead_jobs(client, redis, prefix, MANY)
    answer = await api.call("DELETE", "/v1/dlq", params={"confirm": "true"})
    assert (answer.status, answer.body["purged"]) == (202, dlq.PAGE)
    op_id = answer.body["operation"]["id"]

    async def finished() -> dict[str, Any] | None:
        got = await api.call("GET", f"/v1/operations/{op_id}")
        return got.body if got.body["state"] != "running" else None

    final = await eventually(finished, what="the purge operation finished")
    assert (final["state"], final["kind"], final["purged"], final["done"]) == (
        "succeeded",
        "purge",
        MANY,
        MANY,
    )
    assert await stream_entries(redis, Keys(prefix).dlq) == []
    assert await hash_len(redis, Keys(prefix).jobs) == 0
    small = await api.call("DELETE", "/v1/dlq", params={"confirm": "true"})
    assert (small.status, small.body["purged"]) == (200, 0)


async def test_an_operation_whose_driver_died_is_taken_over_without_doing_a_page_twice(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A replay whose driver died after a page it never recorded is taken over by another
    process's runner: it goes on from the last recorded position, replays every job exactly
    once and ends succeeded."""
    ids = await seed_dead_jobs(client, redis, prefix, MANY)
    store = client.store
    plan = await dlq_ops.plan_replay(store)
    first = await dlq_ops.replay_step(store, plan, dlq_ops.Position())
    op = await begin(store, "replay", plan, first)
    assert first.position is not None
    unrecorded = await dlq_ops.replay_step(store, plan, first.position)  # then the process died
    assert unrecorded.changed == dlq.PAGE
    await redis.zadd(Keys(prefix).operations, {op.id: 0})  # its last sign of life, long ago
    runner = Runner(store, poll_s=0.05)
    task = asyncio.create_task(runner.run())
    try:

        async def finished() -> ops.Operation | None:
            got = await ops.get(store, op.id)
            return got if got and got.state != ops.RUNNING else None

        final = await eventually(finished, what="the operation taken over and finished")
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    assert final.state == ops.SUCCEEDED
    # The unrecorded page was done but is counted nowhere: its entries were gone by then.
    assert (final.done, final.total, final.changed) == (MANY - dlq.PAGE,) * 3
    ready = await stream_entries(redis, Keys(prefix).ready("default"))
    assert sorted(f[b"j"].decode() for _sid, f in ready) == sorted(ids)  # each once
    assert await stream_entries(redis, Keys(prefix).dlq) == []
    assert await redis.zcard(Keys(prefix).operations) == 0
    assert 0 < await redis.ttl(Keys(prefix).operation(op.id)) <= ops.FINISHED_TTL_S


async def test_client_replays_and_purges_everything_page_by_page(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """The Python client's replay_matching and purge_dlq go to the end, however many pages."""
    await seed_dead_jobs(client, redis, prefix, MANY)
    assert (await client.replay_matching())["replayed"] == MANY
    client.dlq_retention_s = 0.0
    await seed_dead_jobs(client, redis, prefix, MANY)
    assert (await client.purge_dlq(0, confirm=True))["purged"] == MANY
    assert await stream_entries(redis, Keys(prefix).dlq) == []


async def test_replay_by_ids_over_several_scripts_is_still_all_or_nothing(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A replay of more ids than one script takes replays none when one of them cannot go
    back, whichever part it is in; without it, every one goes back."""
    good = await seed_dead_jobs(client, redis, prefix, 2 * dlq.SCRIPT_PAGE + 50)
    [orphan] = await seed_dead_jobs(client, redis, prefix, 1)
    job = await client.get_job(orphan)
    assert job is not None
    assert job["webhook_id"] is not None
    await client.delete_webhook(job["webhook_id"])
    with pytest.raises(NotReplayable) as refused:
        await client.replay([*good, orphan])
    assert [(r["id"], r["reason"]) for r in refused.value.refused] == [(orphan, "webhook_deleted")]
    assert len(await stream_entries(redis, Keys(prefix).dlq)) == len(good) + 1
    assert await stream_entries(redis, Keys(prefix).ready("default")) == []
    assert (await client.replay(good))["replayed"] == len(good)
