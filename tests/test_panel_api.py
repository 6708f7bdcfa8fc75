"""The /v1 routes the operator panel needs (issue 21): minute stats, every tenant's webhooks
paged, a webhook's recent jobs, and the DLQ filtered and replayed by reason and time. Each is
asked over HTTP and through the Client, which answer alike."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

from dispatcher.errors import InvalidField
from dispatcher.ids import new_event_ids
from dispatcher.model import Job, JobState, rfc3339
from dispatcher.queue import codec, control, recent
from dispatcher.queue.keys import Keys
from tests.helpers import eventually
from tests.target import Reply
from tests.test_client_parity import both

if TYPE_CHECKING:

    import redis.asyncio as aioredis

    from dispatcher import Client
    from tests.admin_api import Api
    from tests.conftest import WorkerHarness
    from tests.target import Target


def _job(job_id: str, webhook_id: str, state: JobState, ms: int, **fields: Any) -> Job:
    """A finished job of one attempt (tenant acme, event type e), finished at ``ms``."""
    return Job(
        id=job_id,
        webhook_id=webhook_id,
        tenant_id="acme",
        event_type="e",
        stream="default",
        event_id="",
        state=state,
        attempt=1,
        stalls=0,
        created_at_ms=ms,
        finished_at_ms=ms,
        **fields,
    )


async def _state(client: Client, job_id: str) -> str:
    job = await client.get_job(job_id)
    assert job is not None
    return job["state"]


def _at(ms: int) -> str:
    text = rfc3339(ms)
    assert text is not None
    return text


def _invalid(answer: Any, field: str) -> None:
    assert answer.status == 422, answer.text
    assert answer.body["error"]["code"] == "invalid_field"
    assert answer.body["error"]["message"].startswith(f"{field}: "), answer.text


# --- GET /v1/stats ---------------------------------------------------------------------------


async def test_stats_are_sixty_minutes_oldest_first_and_zero_filled(
    api: Api, client: Client
) -> None:
    """/v1/stats answers the last 60 minutes, oldest first and a minute apart, with the
    workers' counters where there are some (average over attempts) and zeros elsewhere."""
    now_minute = control.minute_of(client.store.clock.now_ms())
    await control.flush_stats(
        client.store,
        {
            now_minute - 5: {"delivered": 3, "failed": 1, "dead": 1, "ms_sum": 100},
            now_minute - 1: {"dead": 2},
        },
    )
    answer = await both(api, "GET", "/v1/stats", client.stats)
    series = answer["series"]
    assert answer["window"] == "1h"
    assert len(series) == 60
    starts = [s["t"] for s in series]
    assert starts == sorted(starts)
    assert len(set(starts)) == 60
    by_t = {s["t"]: s for s in series}
    assert by_t[rfc3339((now_minute - 5) * 60_000)] == {
        "t": rfc3339((now_minute - 5) * 60_000),
        "delivered": 3,
        "failed": 1,
        "dead": 1,
        "avg_processing_ms": 25.0,
    }
    assert by_t[rfc3339((now_minute - 1) * 60_000)]["avg_processing_ms"] is None
    quiet = [
        s for t, s in by_t.items() if t not in {rfc3339((now_minute - m) * 60_000) for m in (1, 5)}
    ]
    assert all(
        (s["delivered"], s["failed"], s["dead"], s["avg_processing_ms"]) == (0, 0, 0, None)
        for s in quiet
    )
    error = await both(
        api, "GET", "/v1/stats", partial(client.stats, "24h"), params={"window": "24h"}
    )
    assert (error.code, error.field) == ("invalid_field", "window")


# --- GET /v1/webhooks without a tenant -------------------------------------------------------


async def _all_pages(api: Api, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    params = {"limit": str(limit)}
    while True:
        answer = await api.call("GET", "/v1/webhooks", params=params)
        assert answer.status == 200, answer.text
        pages.append([hook["id"] for hook in answer.body["items"]])
        if answer.body["next_cursor"] is None:
            return pages
        params = {"limit": str(limit), "cursor": answer.body["next_cursor"]}
        assert len(pages) < 100


async def test_every_tenants_webhooks_are_listed_once_page_by_page(
    api: Api, client: Client
) -> None:
    """Without tenant_id, pages of at most ``limit`` webhooks of every tenant and shard end
    with a null cursor, and together hold each webhook once (a small hash scanned in one step
    and a large one over several); a tenant's list is still one page, as before."""
    await client.store.adopt_layout(3)
    small = [await client.create_webhook(f"t{i % 3}", "https://x.io/h") for i in range(7)]
    pages = await _all_pages(api, 3)
    assert all(len(page) <= 3 for page in pages)
    listed = [hook_id for page in pages for hook_id in page]
    assert sorted(listed) == sorted(h["id"] for h in small)

    many = [await client.create_webhook("big", "https://x.io/h") for _ in range(450)]
    listed = [hook_id for page in await _all_pages(api, 100) for hook_id in page]
    assert sorted(listed) == sorted(h["id"] for h in small + many)

    first = await both(
        api, "GET", "/v1/webhooks", partial(client.list_webhooks, limit=2), params={"limit": "2"}
    )
    assert len(first["items"]) == 2
    assert first["next_cursor"] is not None
    tenant = await both(
        api, "GET", "/v1/webhooks", partial(client.list_webhooks, "t1"), params={"tenant_id": "t1"}
    )
    assert tenant == {"items": tenant["items"], "next_cursor": None}  # one page, as before
    assert [h["id"] for h in tenant["items"]] == sorted(
        h["id"] for h in small if h["tenant_id"] == "t1"
    )


async def test_a_webhook_deleted_while_paging_hides_no_other(api: Api, client: Client) -> None:
    """HSCAN's promise holds for the pages: a webhook present from the first page to the last
    is listed, even when one listed before it is deleted between two pages (a page that went
    on by position within a scan step skipped the webhook after the deleted one)."""
    hooks = [await client.create_webhook("acme", "https://x.io/h") for _ in range(40)]
    listed: list[str] = []
    gone: set[str] = set()
    cursor = None
    while True:
        params = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
        page = (await api.call("GET", "/v1/webhooks", params=params)).body
        listed += [h["id"] for h in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        if page["items"] and cursor.rsplit(":", 1)[1] not in {"", "0"}:  # the step goes on
            gone.add(page["items"][0]["id"])
            await client.delete_webhook(page["items"][0]["id"])
    assert gone  # 40 webhooks in a 64-bucket table share a bucket somewhere
    assert {h["id"] for h in hooks} - gone <= set(listed)


async def test_pages_of_another_size_go_on_where_the_last_stopped(api: Api, client: Client) -> None:
    """A cursor taken with one ``limit`` and followed with another misses no webhook (the
    panel asks for what its page still lacks): each HSCAN step is the same whatever the
    page size, so a page goes on where the one before stopped."""
    hooks = [await client.create_webhook("acme", "https://x.io/h") for _ in range(40)]
    listed: list[str] = []
    cursor = None
    size = "1"
    while True:
        params = {"limit": size} | ({"cursor": cursor} if cursor else {})
        page = (await api.call("GET", "/v1/webhooks", params=params)).body
        listed += [h["id"] for h in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        if cursor.rsplit(":", 1)[1] not in {"", "0"}:  # in the middle of a step: go on larger
            size = "100"
    assert size == "100"  # 40 webhooks in a 64-bucket table share a bucket somewhere
    assert {h["id"] for h in hooks} <= set(listed)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": f"0:{2**64}:0"}, "cursor"),
        ({"tenant_id": "acme", "cursor": "0:0:0"}, "cursor"),
    ],
)
async def test_bad_webhook_listings_name_the_parameter(
    api: Api, params: dict[str, str], field: str
) -> None:
    """A page size outside 1..100, a cursor not from an earlier page, or a cursor with a
    tenant (whose list is one page) is 422 naming the parameter."""
    _invalid(await api.call("GET", "/v1/webhooks", params=params), field)


# --- GET /v1/webhooks/{id}/jobs ------------------------------------------------------------


async def test_a_webhooks_recent_jobs_are_its_delivered_and_dead_newest_first(
    api: Api, client: Client, target: Target, workers: WorkerHarness
) -> None:
    """A webhook's recent jobs list its delivered and dead-lettered jobs, the latest finished
    first, with state, attempts, times and last status, and not another webhook's."""
    hook = await client.create_webhook("acme", target.url("/a"))
    other = await client.create_webhook("globex", target.url("/b"))
    await workers.start(max_attempts=1)
    delivered = [
        (await client.publish("acme", "order.paid", {"n": n}))["jobs"][0]["id"] for n in range(2)
    ]
    await client.publish("globex", "order.paid", {"n": 9})
    await target.wait_for(3)
    target.script("/a", Reply(500, b"boom"))
    _new, answer = await client.deliver(hook["id"], "order.failed", {"n": 3})
    dead = answer["jobs"][0]["id"]

    async def dead_lettered() -> bool:
        return await _state(client, dead) == "dead"

    await eventually(dead_lettered)
    recent_jobs = await both(
        api, "GET", f"/v1/webhooks/{hook['id']}/jobs", partial(client.webhook_jobs, hook["id"])
    )
    assert recent_jobs["items"][0]["id"] == dead
    assert sorted(j["id"] for j in recent_jobs["items"][1:]) == sorted(delivered)
    first = recent_jobs["items"][0]
    job = await client.get_job(dead)
    assert job is not None
    assert first == {
        "id": dead,
        "state": "dead",
        "event_type": "order.failed",
        "attempt": 1,
        "created_at": job["created_at"],
        "finished_at": job["finished_at"],
        "last_status": 500,
        "last_error": job["last_error"],
    }
    assert {j["state"] for j in recent_jobs["items"][1:]} == {"delivered"}
    assert recent_jobs["scanned"] >= 4  # its 3 and the other webhook's
    newest = await api.call("GET", f"/v1/webhooks/{hook['id']}/jobs", params={"limit": "1"})
    assert [j["id"] for j in newest.body["items"]] == [dead]
    assert (await api.call("GET", f"/v1/webhooks/{other['id']}/jobs")).body["items"][0][
        "state"
    ] == "delivered"
    assert (await api.call("GET", "/v1/webhooks/wh_nope/jobs")).status == 404
    _invalid(
        await api.call("GET", f"/v1/webhooks/{hook['id']}/jobs", params={"limit": "0"}), "limit"
    )
    _invalid(
        await api.call("GET", f"/v1/webhooks/{hook['id']}/jobs", params={"limit": "101"}), "limit"
    )


async def test_recent_jobs_read_only_the_shards_newest_finished_jobs(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """The read is bounded: a webhook whose jobs finished before the shard's newest 2,000
    shows none, and the answer says 2,000 records were read; a busy one's newest are found
    in the first slice read."""
    quiet = await client.create_webhook("acme", "https://x.io/q")
    busy = await client.create_webhook("acme", "https://x.io/b")
    keys = Keys(prefix)
    now_ms = client.store.clock.now_ms()
    _event_id, job_prefix = new_event_ids()
    pipe = redis.pipeline(transaction=False)
    for i in range(recent.SCANNED_DONE + 1):
        hook_id = quiet["id"] if i == 0 else busy["id"]
        job = _job(f"{job_prefix}{i}", hook_id, JobState.DELIVERED, now_ms + i, payload=b"")
        pipe.hset(keys.jobs, job.id, codec.encode(job, keep_payload=False))
        pipe.zadd(keys.done, {job.id: now_ms + i})
    await pipe.execute()
    answer = (await api.call("GET", f"/v1/webhooks/{quiet['id']}/jobs")).body
    assert answer == {"items": [], "scanned": recent.SCANNED_DONE}
    busy_jobs = (await api.call("GET", f"/v1/webhooks/{busy['id']}/jobs")).body
    assert len(busy_jobs["items"]) == 20
    assert busy_jobs["scanned"] == recent.SLICE  # its 20 newest were in the first slice


# --- GET /v1/dlq and POST /v1/dlq/replay by reason and time ---------------------------------


async def _dead(
    client: Client, redis: aioredis.Redis, prefix: str, entries: list[tuple[int, str]]
) -> tuple[str, list[str]]:
    """Dead jobs of one live webhook, one per ``(dead-letter ms, reason)``, written as
    settle.lua writes them."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    keys = Keys(prefix)
    ids = []
    _event_id, job_prefix = new_event_ids()
    for i, (ms, reason) in enumerate(entries):
        job_id = f"{job_prefix}{i}"
        await redis.xadd(keys.dlq, {"j": job_id, "r": reason}, id=f"{ms}-0")
        job = _job(
            job_id,
            hook["id"],
            JobState.DEAD,
            ms,
            payload=b'{"n":1}',
            last_error="500 down",
            dlq_id=f"{ms}-0",
            reason=reason,
        )
        await redis.hset(keys.jobs, job_id, codec.encode(job))
        ids.append(job_id)
    return hook["id"], ids


T0 = 1_800_000_000_000  # dead-letter times of the seeded entries, a second apart
SEEDED = [(T0, "max_attempts"), (T0 + 1000, "gone"), (T0 + 2000, "gone"), (T0 + 3000, "poison")]


async def test_the_dlq_lists_by_reason_and_time(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """GET /v1/dlq keeps the entries dead for ``reason`` and dead-lettered at or after
    ``since`` and before ``until``, with the other filters, as Client.list_dlq does."""
    hook_id, ids = await _dead(client, redis, prefix, SEEDED)

    async def listed(**filters: str) -> list[str]:
        call = partial(
            client.list_dlq,
            webhook_id=filters.get("webhook_id"),
            reason=filters.get("reason"),
            since=filters.get("since"),
            until=filters.get("until"),
            cursor=filters.get("cursor"),
        )
        answer = await both(api, "GET", "/v1/dlq", call, params=filters)
        return [item["id"] for item in answer["items"]]

    assert await listed(reason="gone") == ids[1:3]
    assert await listed(since=_at(T0 + 1000), until=_at(T0 + 3000)) == ids[1:3]
    assert await listed(until=_at(T0 + 1)) == ids[:1]
    assert await listed(since=_at(T0 + 3000), webhook_id=hook_id) == ids[3:]
    assert await listed(reason="gone", since=_at(T0 + 2000)) == ids[2:3]
    assert await listed(reason="nope") == []
    page = await both(
        api,
        "GET",
        "/v1/dlq",
        partial(client.list_dlq, limit=1, reason="gone"),
        params={"limit": "1", "reason": "gone"},
    )
    after = await listed(reason="gone", cursor=page["next_cursor"])
    assert [page["items"][0]["id"], *after] == ids[1:3]
    for name, value in (("since", "yesterday"), ("until", "2026-01-01T00:00:00")):
        _invalid(await api.call("GET", "/v1/dlq", params={name: value}), name)


async def test_replay_all_takes_reason_and_until(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Replaying everything matching with ``reason`` and ``until`` puts back only the dead jobs
    of that reason dead-lettered before ``until``, over HTTP and through the Client."""
    _hook_id, ids = await _dead(client, redis, prefix, SEEDED)
    answer = await api.call(
        "POST", "/v1/dlq/replay", json={"all": True, "reason": "gone", "until": _at(T0 + 2000)}
    )
    assert answer.status == 200, answer.text
    assert answer.body == {"replayed": 1, "skipped": 0, "skipped_reasons": {}}
    states = [await _state(client, job_id) for job_id in ids]
    assert states == ["dead", "queued", "dead", "dead"]
    replayed = await client.replay_matching(reason="gone", until=_at(T0 + 2001))
    assert replayed == {"replayed": 1, "skipped": 0, "skipped_reasons": {}}
    again = await client.replay_matching(until=_at(T0 + 1))
    assert again == {"replayed": 1, "skipped": 0, "skipped_reasons": {}}
    states = [await _state(client, job_id) for job_id in ids]
    assert states == ["queued", "queued", "queued", "dead"]
    for body, field in (
        ({"all": True, "reason": 5}, "reason"),
        ({"all": True, "until": "soon"}, "until"),
        ({"ids": ids[3:], "reason": "poison"}, "reason"),
    ):
        _invalid(await api.call("POST", "/v1/dlq/replay", json=body), field)


async def test_recent_jobs_with_large_records_skip_none_of_the_newest(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """When delivered records keep large payloads, a read cut short by its byte budget goes
    on from the next record, so the webhook's newest jobs are listed, none skipped."""
    hook = await client.create_webhook("acme", "https://x.io/big")
    keys = Keys(prefix)
    now_ms = client.store.clock.now_ms()
    _event_id, job_prefix = new_event_ids()
    big = b"x" * (recent.CALL_BYTES // 10)  # about 11 records fill one call's budget
    pipe = redis.pipeline(transaction=False)
    for i in range(30):
        job = _job(f"{job_prefix}{i}", hook["id"], JobState.DELIVERED, now_ms + i, payload=big)
        pipe.hset(keys.jobs, job.id, codec.encode(job))
        pipe.zadd(keys.done, {job.id: now_ms + i})
    await pipe.execute()
    answer = (await api.call("GET", f"/v1/webhooks/{hook['id']}/jobs")).body
    assert [j["id"] for j in answer["items"]] == [f"{job_prefix}{i}" for i in range(29, 9, -1)]


async def test_replay_all_refuses_an_empty_filter_rather_than_replay_everything(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """An empty ``reason``, ``webhook_id`` or ``tenant_id`` (a script's unset variable) is a
    422 naming it, as the listing refuses it, not a filter that matches every dead job."""
    _hook_id, ids = await _dead(client, redis, prefix, SEEDED)
    for name in ("reason", "webhook_id", "tenant_id"):
        _invalid(await api.call("POST", "/v1/dlq/replay", json={"all": True, name: ""}), name)
        with pytest.raises(InvalidField):
            await client.replay_matching(**{name: ""})
    assert [await _state(client, job_id) for job_id in ids] == ["dead"] * 4
