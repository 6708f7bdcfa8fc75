"""Publishing with regions (issue 22): a publish in region a queues a's jobs in a's Redis and
puts the jobs of region b's and c's webhooks into a's outbox streams for them, in the same
all-or-nothing script, with every job id naming its region; without regions nothing changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest
import redis.exceptions as rex

from dispatcher.ids import event_id_of, shard_of
from dispatcher.queue import status as queue_status
from dispatcher.queue import tasks as queue_tasks
from dispatcher.queue.backlog import measure
from dispatcher.queue.keys import Keys
from tests.helpers import stream_entries

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from dispatcher import Client

TENANT = "acme"
EVENT = "order.created"
PAYLOAD = {"order": 1}
#: The fields of an outbox entry (contract), less ``o``, which only a FIFO route's entry has.
ENTRY_FIELDS = {"j", "w", "t", "e", "q", "c", "n", "p"}


@pytest.fixture
async def regional(client: Client) -> Client:
    """The test's Client, its Redis set up as region ``a`` of a, b and c."""
    await client.store.adopt_region("a", ("a", "b", "c"))
    return client


async def _hooks(client: Client, regions: list[str | None], **fields: Any) -> list[str]:
    """Webhook ids of tenant ``acme``, one per entry of ``regions`` (None: no region given),
    in id order: the n-th of ``regions`` is the n-th job of an event (jobs go by webhook id)."""
    ids = sorted(
        [
            (await client.create_webhook(TENANT, "https://example.com/hook", **fields))["id"]
            for _ in regions
        ]
    )
    for webhook_id, region in zip(ids, regions, strict=True):
        if region is not None:
            await client.update_webhook(webhook_id, region=region)
    return ids


async def _entries(redis: aioredis.Redis, key: str) -> list[dict[str, str]]:
    """The fields of each entry of stream ``key``, decoded."""
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await stream_entries(redis, key)
    ]


async def _keys(redis: aioredis.Redis, prefix: str, part: str) -> list[str]:
    return [key.decode() async for key in redis.scan_iter(f"{prefix}:*{part}*", count=1000)]


async def test_publish_queues_home_jobs_and_outboxes_the_others(
    regional: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Region a's job is queued in a (id ``~a``); b's and c's jobs are only entries of a's
    outboxes for b and c (ids ``~b``/``~c``) with exactly the contract's fields."""
    keys = Keys(prefix)
    home, in_b, in_c = await _hooks(regional, [None, "b", "c"])
    before_ms = regional.store.clock.now_ms()
    answer = await regional.publish(TENANT, EVENT, PAYLOAD)
    ids = {job["webhook_id"]: job["id"] for job in answer["jobs"]}
    assert answer["matched"] == 3
    assert [ids[home][-2:], ids[in_b][-2:], ids[in_c][-2:]] == ["~a", "~b", "~c"]
    assert {ids[w].partition("~")[0] for w in ids} == {
        f"job_{answer['event_id'].removeprefix('evt_')}.{n}" for n in (1, 2, 3)
    }

    ready = await _entries(redis, keys.ready("default"))
    assert [(e["j"], e["w"]) for e in ready] == [(ids[home], home)]
    assert set(await redis.hkeys(keys.jobs)) == {ids[home].encode()}
    local = await regional.get_job(ids[home])
    assert local is not None
    assert local["state"] == "queued"

    for region, webhook_id in (("b", in_b), ("c", in_c)):
        [entry] = await _entries(redis, keys.outbox(region))
        assert set(entry) == ENTRY_FIELDS
        assert entry["j"] == ids[webhook_id]
        assert (entry["w"], entry["t"], entry["e"], entry["q"], entry["n"]) == (
            webhook_id,
            TENANT,
            EVENT,
            "default",
            "0",
        )
        assert before_ms - 1000 <= int(entry["c"]) <= regional.store.clock.now_ms() + 1000
        assert orjson.loads(entry["p"]) == PAYLOAD
    assert await _keys(redis, prefix, "outbox:a") == []


async def test_outbox_entries_carry_order_time_and_priority(
    regional: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A FIFO route's entry carries ``o`` (``=key`` or ``-``), a scheduled job its due ms in
    ``n``, a priority its stream in ``q``; a delivery and a batch publish outbox alike."""
    keys = Keys(prefix)
    [fifo] = await _hooks(regional, ["b"], ordering="fifo")
    await _hooks(regional, ["c"])
    await regional.publish(TENANT, EVENT, PAYLOAD, ordering_key="cart-7", priority="high")
    await regional.publish(TENANT, EVENT, PAYLOAD, deliver_at="2999-01-01T00:00:00+00:00")
    _, delivered = await regional.deliver(fifo, EVENT, PAYLOAD)
    [many] = await regional.publish_many([{"tenant_id": TENANT, "event_type": EVENT, "payload": 1}])

    in_b = await _entries(redis, keys.outbox("b"))
    assert [(e["o"], e["q"], e["n"]) for e in in_b] == [
        ("=cart-7", "default:high", "0"),
        ("-", "default", "32472144000000"),
        ("-", "default", "0"),
        ("-", "default", "0"),
    ]
    assert all(set(e) == {*ENTRY_FIELDS, "o"} and e["w"] == fifo for e in in_b)
    assert in_b[2]["j"] == delivered["jobs"][0]["id"]
    assert in_b[2]["j"].endswith("~b")
    in_c = await _entries(redis, keys.outbox("c"))
    assert [(set(e), e["q"], e["n"]) for e in in_c] == [
        (ENTRY_FIELDS, "default:high", "0"),
        (ENTRY_FIELDS, "default", "32472144000000"),
        (ENTRY_FIELDS, "default", "0"),
    ]
    assert not isinstance(many, Exception)
    assert sorted(job["id"][-2:] for job in many["jobs"]) == ["~b", "~c"]
    assert await redis.hlen(keys.jobs) == 0  # nothing of b's or c's in a
    assert await _keys(redis, prefix, "lane") == []


async def test_a_failed_outbox_write_undoes_the_whole_publish(
    regional: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """When the last job's outbox write fails, the publish errors and leaves nothing: no local
    job, no outbox entry, no idempotency or dedup key; repeated once it can succeed, it is
    accepted as new."""
    keys = Keys(prefix)
    await _hooks(regional, [None, "b", "c"])  # c's job is written last
    await redis.set(keys.outbox("c"), "in the way")
    with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
        await regional.publish(TENANT, EVENT, PAYLOAD, idempotency_key="k1")
    with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
        await regional.publish(TENANT, EVENT, PAYLOAD, dedup_window_s=60)
    [failed] = await regional.publish_many(
        [{"tenant_id": TENANT, "event_type": EVENT, "payload": 2}]
    )
    assert isinstance(failed, Exception)

    assert await redis.xlen(keys.ready("default")) == 0
    assert await redis.xlen(keys.outbox("b")) == 0
    assert await redis.hlen(keys.jobs) == 0
    for family in ("idempotency", "fingerprint", "dedup"):
        assert await _keys(redis, prefix, family) == [], family

    await redis.delete(keys.outbox("c"))
    new, answer = await regional.publish_checked(TENANT, EVENT, PAYLOAD, idempotency_key="k1")
    assert new
    assert answer["matched"] == 3
    again = await regional.publish(TENANT, EVENT, PAYLOAD, dedup_window_s=60)
    assert not again["deduplicated"]
    assert [await redis.xlen(keys.outbox(r)) for r in "bc"] == [2, 2]


async def test_repeats_add_no_outbox_entry_and_answer_the_same_ids(
    regional: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """An idempotent repeat and a duplicate within the dedup window answer the first ids
    (region suffixes included) and add no outbox entry."""
    keys = Keys(prefix)
    await _hooks(regional, [None, "b"])
    first = await regional.publish(TENANT, EVENT, PAYLOAD, idempotency_key="k1")
    new, repeat = await regional.publish_checked(TENANT, EVENT, PAYLOAD, idempotency_key="k1")
    assert not new
    assert repeat["jobs"] == first["jobs"]
    assert sorted(job["id"][-2:] for job in first["jobs"]) == ["~a", "~b"]

    once = await regional.publish(TENANT, EVENT, {"other": 1}, dedup_window_s=60)
    twice = await regional.publish(TENANT, EVENT, {"other": 1}, dedup_window_s=60)
    assert twice["deduplicated"]
    assert twice["jobs"] == once["jobs"]
    assert await redis.xlen(keys.outbox("b")) == 2
    assert await redis.xlen(keys.ready("default")) == 2


async def test_task_jobs_name_the_home_region(regional: Client) -> None:
    """Task runs, enqueued by hand or by the periodic tick, get ids ending ``~a``."""
    store = regional.store
    await queue_tasks.register(
        store, [("review.once", "maintenance", None), ("review.every", "maintenance", 60.0)]
    )
    enqueued = await queue_tasks.enqueue(store, "review.once", b"{}", queue=None, due_ms=None)
    assert enqueued is not None
    assert enqueued[0].endswith("~a")
    runs, _ = await queue_tasks.tick(store)
    assert [(name, job_id[-2:]) for name, job_id in runs] == [("review.every", "~a")]
    for job_id in (enqueued[0], runs[0][1]):
        assert await regional.get_job(job_id) is not None


async def test_without_regions_nothing_new_is_written(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Without regions job ids have no suffix, and no outbox, versions or registry key (nor
    layout region field) exists after publishes of every kind and a task run."""
    [fifo] = (await client.create_webhook(TENANT, "https://example.com/f", ordering="fifo"),)
    await client.create_webhook(TENANT, "https://example.com/plain")
    answers = [
        await client.publish(TENANT, EVENT, PAYLOAD, idempotency_key="k1"),
        await client.publish(TENANT, EVENT, PAYLOAD, dedup_window_s=60),
        await client.publish(TENANT, EVENT, PAYLOAD, deliver_at="2999-01-01T00:00:00+00:00"),
        (await client.deliver(fifo["id"], EVENT, PAYLOAD))[1],
    ]
    await queue_tasks.register(client.store, [("review.every", "maintenance", 60.0)])
    runs, _ = await queue_tasks.tick(client.store)
    ids = [job["id"] for answer in answers for job in answer["jobs"]] + [runs[0][1]]
    assert len(ids) == 8
    assert not any("~" in job_id for job_id in ids)
    for family in ("outbox", "versions", "registry"):
        assert await _keys(redis, prefix, family) == [], family
    layout = cast("dict[bytes, bytes]", await redis.hgetall(Keys(prefix).layout))
    assert not {b"region", b"regions", b"incarnation"} & set(layout)


async def test_sharded_parts_outbox_in_their_shard_and_a_retry_completes_them(
    regional: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """With two shards each part writes its outbox entries in its own shard; when one part's
    outbox write fails, a retry with the same idempotency key completes it with the event's
    ids, and a further repeat adds nothing."""
    await regional.store.adopt_layout(2)
    hooks: list[str] = []
    while min(sum(shard_of(h) == k for h in hooks) for k in (0, 1)) < 2:
        hooks.append((await regional.create_webhook(TENANT, "https://example.com/h"))["id"])
    in_b = {max(h for h in hooks if shard_of(h) == k) for k in (0, 1)}
    for webhook_id in in_b:
        await regional.update_webhook(webhook_id, region="b")
    await redis.set(Keys(prefix, 1).outbox("b"), "in the way")
    with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
        await regional.publish(TENANT, EVENT, PAYLOAD, idempotency_key="k")
    await redis.delete(Keys(prefix, 1).outbox("b"))

    answer = await regional.publish(TENANT, EVENT, PAYLOAD, idempotency_key="k")
    ids = {job["webhook_id"]: job["id"] for job in answer["jobs"]}
    assert {w: ids[w][-2:] for w in hooks} == {w: "~b" if w in in_b else "~a" for w in hooks}
    assert all(event_id_of(job_id) == answer["event_id"] for job_id in ids.values())
    assert await regional.publish(TENANT, EVENT, PAYLOAD, idempotency_key="k") == answer
    for k in (0, 1):
        entries = await _entries(redis, Keys(prefix, k).outbox("b"))
        assert [(e["w"], e["j"]) for e in entries] == [
            (w, ids[w]) for w in in_b if shard_of(w) == k
        ]


async def test_an_outbox_for_a_region_dropped_from_the_table_is_still_measured(
    regional: Client,
) -> None:
    """Jobs published for a region removed from [regions] (which nothing relays) show in the
    status and count in the backlog alerts, rather than piling up unseen."""
    [in_c] = await _hooks(regional, ["c"])
    await regional.store.adopt_region("a", ("a", "b"))  # c dropped from the table
    await regional.publish(TENANT, EVENT, PAYLOAD)
    counts = await queue_status.outbox_counts(regional.store)
    assert counts["c"]["depth"] == 1
    assert counts["b"] == {"depth": 0, "lag_ms": None}
    backlog = await measure(regional.store)
    assert backlog.outbox == 1
    assert in_c.startswith("wh_")
