"""The Python Client and the admin API give the same answer, and the same error, for the same
operation on the same state (issue 15: pause/resume, replay, purge and the rest)."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from dispatcher import Client, ConfirmationRequired, DispatcherError, UnknownQueue
from dispatcher.queue import control, dlq
from dispatcher.queue import tasks as queue_tasks
from dispatcher.queue.keys import Keys
from tests.admin_api import Api, start_api
from tests.helpers import eventually, seed_dead_jobs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    import redis.asyncio as aioredis

    from dispatcher.queue.store import Store

DAY_S = 86_400
WEEK_S = 7 * DAY_S


@pytest.fixture
async def api(client: Client) -> AsyncIterator[Api]:
    """The admin API served from this test's Client, as the daemon serves it (configured with
    ``delivery.queues = ["configured"]``)."""
    client.configured_queues = frozenset({"configured"})
    _app, served = await start_api(client)
    yield served
    await served.close()


async def both(
    api: Api,
    method: str,
    path: str,
    call: Callable[[], Awaitable[Any]],
    *,
    json: Any = None,
    params: dict[str, str] | None = None,
    same_message: bool = True,
) -> Any:
    """Ask the API, then the Client: the same body (as JSON), or the same error (code,
    message and details) with the HTTP status of its code. Returns the Client's answer or
    error. ``same_message=False``: the API's own check of the request spoke first."""
    http = await api.call(method, path, json=json, params=params)
    error: DispatcherError | None = None
    try:
        answer = await call()
    except DispatcherError as exc:
        error = exc
    if error is not None:
        assert (http.status, http.body["error"]["code"]) == (error.http_status, error.code)
        message = error.message if same_message else http.body["error"]["message"]
        expected = {"error": {"code": error.code, "message": message}, **error.details()}
        assert http.body == expected
        return error
    assert http.status in {200, 201}, http.body
    assert http.body == orjson.loads(orjson.dumps(answer))  # a stored payload is a Fragment
    return answer


async def dead_jobs(client: Client, redis: aioredis.Redis, entry_ids: list[str]) -> list[str]:
    """Dead jobs of one live webhook, dead-lettered at the times their DLQ ``entry_ids`` say
    ("*": now)."""
    prefix = client.store.keys.prefix
    return await seed_dead_jobs(client, redis, prefix, len(entry_ids), entry_ids=entry_ids)


# --- queues ----------------------------------------------------------------------------------


async def test_pausing_an_unknown_queue_is_404_both_ways(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Pausing or resuming a queue nothing knows (a typo) is 404 unknown_queue over HTTP and
    UnknownQueue in Python, naming it and listing the known queues, and pauses nothing."""
    await client.create_webhook("acme", "https://hooks.example.com/x", queue="emails")
    for verb in ("pause", "resume"):
        error = await both(
            api, "POST", f"/v1/queues/defualt/{verb}", partial(getattr(client, verb), "defualt")
        )
        assert isinstance(error, UnknownQueue)
        assert (error.code, error.http_status) == ("unknown_queue", 404)
        assert "'defualt'" in error.message
        assert "known queues: configured, default, emails" in error.message
        assert error.known == ["configured", "default", "emails"]
    assert await redis.smembers(Keys(prefix).paused) == set()


async def test_known_queues_pause_and_resume_alike(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """default, the configured queues, those a webhook names (created now or before the
    upgrade), those a worker serves and those holding jobs can be paused and resumed, with
    the same answer from the Client and the API."""
    keys = Keys(prefix)
    with pytest.raises(UnknownQueue):  # no webhook yet: nothing to index
        await client.pause("nope")
    await client.create_webhook("acme", "https://hooks.example.com/x", queue="emails")
    hook = await client.create_webhook("acme", "https://hooks.example.com/y", queue="changed")
    await client.update_webhook(hook["id"], queue="moved")  # a change names its new queue
    await control.heartbeat(client.store, "worker-1", {"queues": ["served"]})
    await redis.xadd(keys.ready("leftover:high"), {"j": "job_x", "w": "wh_x"})

    async def pause_and_resume(queue: str) -> None:
        paused = await both(api, "POST", f"/v1/queues/{queue}/pause", partial(client.pause, queue))
        assert paused == {"queue": queue, "paused": True}
        resumed = await both(
            api, "POST", f"/v1/queues/{queue}/resume", partial(client.resume, queue)
        )
        assert resumed == {"queue": queue, "paused": False}

    for queue in ("default", "configured", "emails", "moved", "served", "leftover"):
        await pause_and_resume(queue)
    # A webhook written before the upgrade: its queue is in no set, and no backfill ran yet.
    await client.create_webhook("acme", "https://hooks.example.com/z", queue="legacy")
    await redis.srem(keys.queues, "legacy")
    await redis.delete(keys.queues_indexed)
    await pause_and_resume("legacy")
    assert await redis.sismember(keys.queues, "legacy")  # the backfill found it, once
    assert await redis.exists(keys.queues_indexed)


async def old_release_hooks(redis: aioredis.Redis, keys: Keys, raw: bytes, count: int) -> None:
    """``count`` webhooks written as a release before the ``queues`` set wrote them: copies of
    the record ``raw`` under new ids, in no set and not counted."""
    pipe = redis.pipeline(transaction=False)
    old_id = orjson.loads(raw)["id"].encode()
    for i in range(count):
        wid = f"wh_{i:020d}"
        pipe.hset(keys.webhooks, wid, raw.replace(old_id, wid.encode()))
    await pipe.execute()


async def hscans(redis: aioredis.Redis) -> int:
    """HSCAN calls since the last CONFIG RESETSTAT (the backfill's pages)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hscan", {}).get("calls", 0))


async def test_a_webhook_an_older_release_writes_after_the_backfill_keeps_its_queue_known(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """During a rolling upgrade (or from a producer on an older Client) a webhook written
    without the queues set, after the backfill ran, still makes its queue known to pause."""
    keys = Keys(prefix)
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    with pytest.raises(UnknownQueue):
        await client.pause("typo")
    raw = await redis.hget(keys.webhooks, hook["id"])
    assert isinstance(raw, bytes)
    await old_release_hooks(redis, keys, raw.replace(b'"queue":"default"', b'"queue":"legacy"'), 1)
    assert await client.pause("legacy") == {"queue": "legacy", "paused": True}
    # An older release moving a webhook to another queue changes no count: the backfill is
    # trusted for INDEXED_TTL_MS at most, then the next miss scans again.
    moved = raw.replace(b'"queue":"default"', b'"queue":"moved"')
    await redis.hset(keys.webhooks, hook["id"], moved)
    assert 0 < await redis.pttl(keys.queues_indexed) <= control.INDEXED_TTL_MS
    await redis.delete(keys.queues_indexed)  # as its TTL does
    assert await client.pause("moved") == {"queue": "moved", "paused": True}


async def test_concurrent_unknown_queue_calls_run_the_backfill_once(
    client: Client, redis: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """Several processes refusing typos at once scan the webhooks once between them, not once
    each, and the scan does not run again once done."""
    keys = Keys(prefix)
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    raw = await redis.hget(keys.webhooks, hook["id"])
    assert isinstance(raw, bytes)
    await old_release_hooks(redis, keys, raw, 5_000)
    await redis.delete(keys.queues, keys.queues_indexed)
    others = [Client.from_url(redis_url, prefix=prefix) for _ in range(3)]
    await redis.config_resetstat()

    async def unknown(caller: Client) -> None:
        with pytest.raises(UnknownQueue):
            await caller.pause("nope")

    try:
        await asyncio.gather(*(unknown(c) for c in [client, *others]))
        pages = await hscans(redis)  # HSCAN's COUNT is a hint: about 5 001 / INDEX_PAGE
        assert 0 < pages <= -(-5_001 // control.INDEX_PAGE) + 1
        assert await redis.exists(keys.queues_indexed)
        await asyncio.gather(*(unknown(c) for c in [client, *others]))
        assert await hscans(redis) == pages
    finally:
        await asyncio.gather(*(c.close() for c in others))


async def test_a_large_backfill_is_spread_over_requests_and_says_it_is_unfinished(
    client: Client, redis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refusal scans a bounded share of the webhooks and goes on where the previous one
    stopped; until the scan is done the 404 says the index is still being built, after which
    an older webhook's queue is known."""
    monkeypatch.setattr(control, "INDEX_PAGE", 50)
    monkeypatch.setattr(control, "INDEX_BUDGET", 3)
    keys = Keys(prefix)
    hook = await client.create_webhook("acme", "https://hooks.example.com/x", queue="legacy")
    raw = await redis.hget(keys.webhooks, hook["id"])
    assert isinstance(raw, bytes)
    await old_release_hooks(redis, keys, raw, 999)  # past the listpack size: HSCAN pages
    await redis.delete(keys.queues, keys.queues_indexed)
    assert not await redis.sismember(keys.queues, "legacy")
    await redis.config_resetstat()
    with pytest.raises(UnknownQueue) as first:
        await client.pause("nope")
    assert await hscans(redis) == control.INDEX_BUDGET
    assert "still being built" in first.value.message
    assert "of 1000 webhooks read" in first.value.message
    assert not await redis.exists(keys.queues_lock)  # freed for the next request
    requests, message = 1, first.value.message
    while "still being built" in message:
        with pytest.raises(UnknownQueue) as refused:
            await client.pause("nope")
        requests, message = requests + 1, refused.value.message
    assert requests > 1
    assert await hscans(redis) <= requests * control.INDEX_BUDGET
    assert await client.pause("legacy") == {"queue": "legacy", "paused": True}
    await redis.config_resetstat()
    with pytest.raises(UnknownQueue) as done:
        await client.pause("nope")
    assert "still being built" not in done.value.message
    assert await hscans(redis) == 0


async def test_a_new_install_needs_no_scan_on_its_first_typo(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """On an install whose webhooks were all written by this release, refusing a typo reads
    no webhook record, and deleting webhooks keeps it right."""
    keys = Keys(prefix)
    hooks = [
        await client.create_webhook("acme", f"https://hooks.example.com/{i}", queue=f"q{i}")
        for i in range(3)
    ]
    await redis.config_resetstat()
    with pytest.raises(UnknownQueue) as refused:
        await client.pause("nope")
    assert "still being built" not in refused.value.message
    assert await hscans(redis) == 0
    await client.delete_webhook(hooks[0]["id"])
    assert await client.pause("q0") == {"queue": "q0", "paused": True}  # the set never shrinks
    with pytest.raises(UnknownQueue):
        await client.pause("nope")
    assert await hscans(redis) == 0
    assert await redis.get(keys.queues_indexed) == b"2"


async def test_from_url_knows_the_daemons_configured_queues(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> None:
    """Client.from_url takes the daemon's delivery.queues, as Client(...) does, so pausing a
    configured queue no worker serves yet works from Python as over HTTP."""
    async with Client.from_url(redis_url, prefix=prefix, queues=["configured"]) as c:
        assert await c.pause("configured") == {"queue": "configured", "paused": True}
    assert await redis.smembers(Keys(prefix).paused) == {b"configured"}


async def test_a_paused_queue_can_always_be_resumed(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A queue paused by anyone (even one nothing else knows) is resumed by the API and by the
    Client alike; once resumed it is unknown again."""
    paused = Keys(prefix).paused
    await redis.sadd(paused, "orphan")
    http = await api.call("POST", "/v1/queues/orphan/resume")
    assert (http.status, http.body) == (200, {"queue": "orphan", "paused": False})
    await redis.sadd(paused, "orphan")
    assert await client.resume("orphan") == {"queue": "orphan", "paused": False}
    with pytest.raises(UnknownQueue):
        await client.resume("orphan")


# --- replay --------------------------------------------------------------------------------


async def test_replay_by_ids_names_the_ids_not_found_and_not_dead(
    api: Api, client: Client, redis: aioredis.Redis
) -> None:
    """A replay by ids answers which ids were unknown and which jobs were not dead, the same
    from the API and the Client, and replays the dead ones."""
    first, second = await dead_jobs(client, redis, ["*", "*"])
    queued = (await client.publish("acme", "e", {}))["jobs"][0]["id"]
    unknown = ["job_nope", "job_00000000000000000000.1", "job_00000000000000000000.0.3"]
    http = await api.call("POST", "/v1/dlq/replay", json={"ids": [first, *unknown, queued]})
    answer = await client.replay([second, *unknown, queued, second])
    expected = {"replayed": 1, "not_found": unknown, "not_dead": [queued]}
    assert (http.status, http.body) == (200, expected)
    assert answer == expected
    again = await both(
        api,
        "POST",
        "/v1/dlq/replay",
        lambda: client.replay([first, second]),
        json={"ids": [first, second]},
    )
    assert again == {"replayed": 0, "not_found": [], "not_dead": [first, second]}


@pytest.mark.parametrize(
    "ids",
    [
        "job_abcdefghijklmnopqrst.0",
        [],
        [1, None],
        [["nested"]],
        [f"job_{i}" for i in range(dlq.MAX_REPLAY_IDS + 1)],
    ],
    ids=["a_string", "empty", "not_strings", "unhashable", "too_many"],
)
async def test_replay_refuses_what_the_api_refuses(api: Api, client: Client, ids: Any) -> None:
    """client.replay(ids) refuses what the API's {"ids": ...} refuses, with the same 422
    invalid_field, rather than reading a string letter by letter or answering a no-op."""
    error = await both(
        api, "POST", "/v1/dlq/replay", partial(client.replay, ids), json={"ids": ids}
    )
    assert (error.code, error.field) == ("invalid_field", "ids")


async def test_a_replay_of_as_many_ids_as_allowed_answers_alike(api: Api, client: Client) -> None:
    """The bound on a replay by ids is the same for the Client and the API: the most allowed
    is answered by both."""
    ids = [f"job_{i}" for i in range(dlq.MAX_REPLAY_IDS)]
    answer = await both(
        api, "POST", "/v1/dlq/replay", partial(client.replay, ids), json={"ids": ids}
    )
    assert answer == {"replayed": 0, "not_found": ids, "not_dead": []}


async def test_replay_matching_list_and_inspect_answer_alike(
    api: Api, client: Client, redis: aioredis.Redis
) -> None:
    """Listing, inspecting and replaying everything matching give the API's answers in Python,
    and the same errors."""
    [job_id] = await dead_jobs(client, redis, ["*"])
    await both(api, "GET", "/v1/dlq", client.list_dlq)
    await both(api, "GET", f"/v1/dlq/{job_id}", lambda: client.inspect_dlq(job_id))
    await both(api, "GET", "/v1/dlq/job_nope", lambda: client.inspect_dlq("job_nope"))
    error = await both(
        api, "GET", "/v1/dlq", lambda: client.list_dlq(cursor="abc"), params={"cursor": "abc"}
    )
    assert isinstance(error, DispatcherError)
    http = await api.call("POST", "/v1/dlq/replay", json={"all": True})
    [other] = await dead_jobs(client, redis, ["*"])
    answer = await client.replay_matching()
    expected = {"replayed": 1, "skipped": 0, "skipped_reasons": {}}
    assert (http.status, http.body, answer) == (200, expected, expected)
    assert (await client.get_job(other) or dict[str, Any]()).get("state") == "queued"


async def test_large_replays_and_purges_answer_the_clients_keys_and_an_operation(
    api: Api, client: Client, redis: aioredis.Redis
) -> None:
    """A replay or purge too large for one request answers 202 with the keys of the Client's
    answer (which goes to the end itself) plus the operation doing the rest."""

    async def finished(answer: Any) -> None:
        path = f"/v1/operations/{answer.body['operation']['id']}"

        async def done() -> bool:
            return bool((await api.call("GET", path)).body["state"] == "succeeded")

        await eventually(done, what="the operation finished")

    await dead_jobs(client, redis, [f"1000-{i}" for i in range(dlq.PAGE + 1)])
    purge = await api.call("DELETE", "/v1/dlq", params={"confirm": "true"})
    assert (purge.status, purge.body["retention_s"]) == (202, WEEK_S)
    await finished(purge)
    assert set(purge.body) - {"operation"} == set(await client.purge_dlq(confirm=True))
    await dead_jobs(client, redis, ["*"] * (dlq.PAGE + 1))
    replay = await api.call("POST", "/v1/dlq/replay", json={"all": True})
    assert replay.status == 202
    await finished(replay)
    assert set(replay.body) - {"operation"} == set(await client.replay_matching())


# --- purge ---------------------------------------------------------------------------------


async def test_purge_on_an_empty_dlq_states_the_retention_floor(api: Api, client: Client) -> None:
    """On a new install the unconfirmed purge says that nothing is older than the age asked
    and what dlq.retention_s is, as 409 confirmation_required and ConfirmationRequired."""
    error = await both(
        api,
        "DELETE",
        "/v1/dlq",
        lambda: client.purge_dlq(30 * DAY_S),
        params={"older_than_s": str(30 * DAY_S)},
    )
    assert isinstance(error, ConfirmationRequired)
    assert error.message == (
        "purging deletes 0 DLQ entries older than 30 days; dlq.retention_s (7 days) protects "
        "0 younger DLQ entries; repeat with confirm=true"
    )
    assert error.details() == {"would_purge": 0, "retention_s": WEEK_S, "within_retention": 0}


async def test_purge_counts_the_entries_the_retention_keeps(
    api: Api, client: Client, redis: aioredis.Redis
) -> None:
    """The unconfirmed purge counts the entries it would delete and those younger than the
    retention, which stay; the confirmed one answers what it deleted with the same facts,
    from the API and the Client alike."""
    await dead_jobs(client, redis, ["1000-0", "1000-1", "*", "*", "*"])
    error = await both(api, "DELETE", "/v1/dlq", client.purge_dlq)
    assert isinstance(error, ConfirmationRequired)
    assert error.message == (
        "purging deletes 2 DLQ entries older than 7 days; dlq.retention_s (7 days) protects "
        "3 younger DLQ entries; repeat with confirm=true"
    )
    assert (error.would_purge, error.within_retention) == (2, 3)
    http = await api.call("DELETE", "/v1/dlq", params={"confirm": "true"})
    assert (http.status, http.body) == (
        200,
        {"purged": 2, "retention_s": WEEK_S, "within_retention": 3},
    )
    again = await client.purge_dlq(confirm=True)
    assert again == {"purged": 0, "retention_s": WEEK_S, "within_retention": 3}
    bad = await both(
        api, "DELETE", "/v1/dlq", lambda: client.purge_dlq(-5), params={"older_than_s": "-5"}
    )
    assert isinstance(bad, DispatcherError)
    assert bad.code == "invalid_field"


async def test_purge_older_than_the_retention_keeps_the_entries_in_between(
    api: Api, client: Client, redis: aioredis.Redis
) -> None:
    """With older_than_s above the retention, an entry older than the retention but younger
    than older_than_s is neither purged nor counted as within the retention."""
    client.dlq_retention_s = 60
    now_ms = client.store.clock.now_ms()
    await dead_jobs(client, redis, ["1000-0", f"{now_ms - 120_000}-0", "*"])
    error = await both(
        api, "DELETE", "/v1/dlq", lambda: client.purge_dlq(3600), params={"older_than_s": "3600"}
    )
    assert isinstance(error, ConfirmationRequired)
    assert (error.would_purge, error.retention_s, error.within_retention) == (1, 60, 1)
    assert "older than 1 hour; dlq.retention_s (1 minute) protects 1 younger DLQ entry" in str(
        error
    )


# --- the rest ------------------------------------------------------------------------------


async def test_webhook_operations_answer_alike(api: Api, client: Client) -> None:
    """Reading, listing, changing and rotating a webhook give the same answers and errors from
    the API and the Client (fields that change at each call aside)."""
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    path = f"/v1/webhooks/{hook['id']}"
    await both(api, "GET", path, lambda: client.get_webhook(hook["id"]))
    listing = partial(client.list_webhooks, "acme")
    await both(api, "GET", "/v1/webhooks", listing, params={"tenant_id": "acme"})
    await both(api, "GET", "/v1/webhooks/wh_nope", lambda: client.get_webhook("wh_nope"))
    await both(
        api,
        "PATCH",
        path,
        lambda: client.update_webhook(hook["id"], colour="red"),
        json={"colour": "red"},
        same_message=False,  # "is not a field of this request" / "is not a webhook field"
    )
    await both(
        api,
        "POST",
        "/v1/webhooks",
        # Not a list: callers of the public API are not always type-checked.
        lambda: client.create_webhook("acme", "https://x.example.com", "a.b"),  # type: ignore[arg-type]
        json={"tenant_id": "acme", "url": "https://x.example.com", "event_types": "a.b"},
    )
    await both(
        api,
        "POST",
        f"{path}/rotate-secret",
        lambda: client.rotate_secret(hook["id"], -5),
        json={"grace_s": -5},
    )
    http = await api.call("PATCH", path, json={"description": "d"})
    changed = await client.update_webhook(hook["id"], description="d")
    assert set(http.body) == set(changed)
    rotated = await api.call("POST", f"{path}/rotate-secret", json={"grace_s": 0})
    assert set(rotated.body) == set(await client.rotate_secret(hook["id"], 0))


async def test_status_answers_alike_but_for_the_daemons_alerts(api: Api, client: Client) -> None:
    """The Client's status has the API's fields and counts, all but the alerts, which only the
    daemon serving the API judges."""
    await client.publish("acme", "e", {})
    http = await api.call("GET", "/v1/status")
    answer = await client.status()
    assert set(http.body) - {"alerts"} == set(answer)
    for name in ("queued", "active", "scheduled", "dlq_size", "paused", "queues", "workers"):
        assert http.body[name] == answer[name]


# --- tasks -----------------------------------------------------------------------------------


async def test_task_listing_and_unknown_names_answer_alike(
    api: Api, client: Client, store: Store
) -> None:
    """GET /v1/tasks is Client.list_tasks, and an unknown task name is 404 not_found both ways
    (POST /v1/tasks/{name}/run and Client.enqueue_task), enqueueing nothing."""
    await queue_tasks.register(
        store, [("reports.daily", "analytics", None), ("t.tick", "maintenance", 60.0)]
    )
    listed = await both(api, "GET", "/v1/tasks", client.list_tasks)
    assert [(t["name"], t["queue"], t["every_s"]) for t in listed["items"]] == [
        ("reports.daily", "analytics", None),
        ("t.tick", "maintenance", 60.0),
    ]
    error = await both(api, "POST", "/v1/tasks/nope/run", partial(client.enqueue_task, "nope"))
    assert (error.code, error.http_status) == ("not_found", 404)


async def test_retries_and_test_sends_answer_alike(
    api: Api, client: Client, redis: aioredis.Redis
) -> None:
    """Retrying jobs (dead, queued, unknown) and testing an unknown webhook, or with a bad
    field, give the same answers and errors from the API and the Client."""
    first, second = await dead_jobs(client, redis, ["*", "*"])
    http = await api.call("POST", f"/v1/jobs/{first}/retry")
    assert http.status == 202
    answer = await client.retry_job(second)
    assert {**http.body, "id": "", "created_at": ""} == {**answer, "id": "", "created_at": ""}
    await both(api, "POST", f"/v1/jobs/{first}/retry", lambda: client.retry_job(first))
    await both(api, "POST", "/v1/jobs/job_nope/retry", lambda: client.retry_job("job_nope"))
    await both(api, "POST", "/v1/webhooks/wh_nope/test", lambda: client.test_webhook("wh_nope"))
    hook = await client.create_webhook("acme", "https://hooks.example.com/x")
    await both(
        api,
        "POST",
        f"/v1/webhooks/{hook['id']}/test",
        lambda: client.test_webhook(hook["id"], event_type="a b"),
        json={"event_type": "a b"},
    )
