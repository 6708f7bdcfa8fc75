"""The admin API over real HTTP against a real Redis: answers, errors and the state behind them."""

from __future__ import annotations

import asyncio
import re
import signal
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from dispatcher import Client, NotReplayable, shapes
from dispatcher.queue import delays, streams
from dispatcher.queue.keys import Keys, streams_of
from tests.admin_api import TOKEN, Api, start_api
from tests.helpers import Daemon, daemon_env, eventually, free_port, stream_entries
from tests.target import Reply, Target

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import redis.asyncio as aioredis
    from aiohttp import web

    from dispatcher.queue.store import Store
    from tests.conftest import WorkerHarness

SMALL_PAYLOAD_LIMIT = 1024


@pytest.fixture
async def served(client: Client) -> AsyncIterator[tuple[web.Application, Api]]:
    client.max_payload_bytes = SMALL_PAYLOAD_LIMIT
    app, api = await start_api(client)
    yield app, api
    await api.close()


@pytest.fixture
def api(served: tuple[web.Application, Api]) -> Api:
    return served[1]


async def _snapshot(redis: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key of the test's prefix with its type and a dump of its value."""
    keys = sorted([k async for k in redis.scan_iter(f"{prefix}:*", count=1000)])
    return {k: await redis.dump(k) for k in keys}


def _path_for(route: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", route)


def _v1_routes(app: web.Application) -> list[tuple[str, str]]:
    routes = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/v1") and route.method != "HEAD":
            routes.append((route.method, _path_for(path)))
    return routes


# --- probes and auth -------------------------------------------------------------------------


async def test_probes_answer_without_a_token(api: Api) -> None:
    """/healthz, /readyz, /metrics and /openapi.json need no token; /healthz says ok."""
    health = await api.call("GET", "/healthz", token=None)
    assert (health.status, health.body) == (200, {"status": "ok"})
    ready = await api.call("GET", "/readyz", token=None)
    assert (ready.status, ready.body) == (200, {"status": "ready"})
    spec = await api.call("GET", "/openapi.json", token=None)
    assert spec.status == 200
    assert spec.body["openapi"].startswith("3.1")
    assert (await api.call("GET", "/metrics", token=None)).status == 200


async def test_every_v1_route_refuses_a_missing_or_wrong_token(
    served: tuple[web.Application, Api], redis: aioredis.Redis, prefix: str
) -> None:
    """Each /v1 route answers 401 without a token or with a wrong one, and changes nothing."""
    app, api = served
    routes = _v1_routes(app)
    assert len(routes) == 24  # + the panel's /v1/stats and /v1/webhooks/{id}/jobs (issue 21)
    before = await _snapshot(redis, prefix)
    for method, path in routes:
        for token in (None, "wrong", TOKEN + "x", ""):
            answer = await api.call(method, path, json={}, token=token)
            assert answer.status == 401, (method, path, token, answer.text)
            assert answer.body["error"]["code"] == "unauthorized"
            assert answer.headers["WWW-Authenticate"] == "Bearer"
    unknown = await api.call("GET", "/v1/nothing", token=None)
    assert unknown.status == 401
    assert await _snapshot(redis, prefix) == before


async def test_no_token_configured_refuses_every_v1_call(client: Client) -> None:
    """Without a configured token every /v1 call is 401 with a message that says why."""
    app, api = await start_api(client, token=None)
    try:
        for method, path in _v1_routes(app):
            for token in (None, "anything", ""):
                answer = await api.call(method, path, json={}, token=token)
                assert answer.status == 401
                assert "no admin token is configured" in answer.body["error"]["message"]
        assert (await api.call("GET", "/healthz", token=None)).status == 200
    finally:
        await api.close()


async def test_unknown_routes_and_methods_answer_json_errors(api: Api) -> None:
    """An unknown route is a JSON 404, a wrong method a JSON 405 with Allow."""
    missing = await api.call("GET", "/nowhere")
    assert missing.status == 404
    assert missing.body["error"]["code"] == "not_found"
    wrong = await api.call("PUT", "/v1/events", json={})
    assert wrong.status == 405
    assert wrong.body["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]


# --- webhooks --------------------------------------------------------------------------------


async def test_webhook_lifecycle(
    api: Api, redis: aioredis.Redis, prefix: str, target: Target, workers: WorkerHarness
) -> None:
    """Create, list, get, patch, disable, rotate and delete; secrets only in create and rotate."""
    created = await api.call(
        "POST",
        "/v1/webhooks",
        json={"tenant_id": "acme", "url": target.url(), "event_types": ["order.created"]},
    )
    assert created.status == 201
    hook = created.body
    assert hook["secret"].startswith("whsec_")
    assert hook["enabled"] is True
    keys = Keys(prefix)
    stored = orjson.loads(await redis.hget(keys.webhooks, hook["id"]) or b"{}")
    assert stored["secret"] == hook["secret"]

    listed = await api.call("GET", "/v1/webhooks", params={"tenant_id": "acme"})
    assert listed.status == 200
    assert [h["id"] for h in listed.body["items"]] == [hook["id"]]
    assert "secret" not in listed.body["items"][0]
    assert (await api.call("GET", "/v1/webhooks", params={"tenant_id": "other"})).body == {
        "items": [],
        "next_cursor": None,  # a tenant's list is one page (issue 21 added the cursor)
    }
    got = await api.call("GET", f"/v1/webhooks/{hook['id']}")
    assert got.status == 200
    assert "secret" not in got.body
    assert hook["secret"] not in got.text

    patched = await api.call(
        "PATCH", f"/v1/webhooks/{hook['id']}", json={"enabled": False, "description": "paused"}
    )
    assert patched.status == 200
    assert (patched.body["enabled"], patched.body["description"]) == (False, "paused")
    assert "secret" not in patched.body
    stored = orjson.loads(await redis.hget(keys.webhooks, hook["id"]) or b"{}")
    assert stored["enabled"] is False
    await api.call("PATCH", f"/v1/webhooks/{hook['id']}", json={"enabled": True})

    rotated = await api.call(
        "POST", f"/v1/webhooks/{hook['id']}/rotate-secret", json={"grace_s": 3600}
    )
    assert rotated.status == 200
    new_secret = rotated.body["secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != hook["secret"]
    stored = orjson.loads(await redis.hget(keys.webhooks, hook["id"]) or b"{}")
    assert stored["secret"] == new_secret
    assert [s for s, _until in stored["old_secrets"]] == [hook["secret"]]
    # During the grace both secrets sign: a receiver with either one verifies the delivery.
    await workers.start()
    published = await api.call(
        "POST",
        "/v1/events",
        json={"tenant_id": "acme", "event_type": "order.created", "payload": {}},
    )
    assert published.status == 202
    [req] = await target.wait_for(1)
    Verifier(new_secret).verify(req.body, dict(req.headers))
    Verifier(hook["secret"]).verify(req.body, dict(req.headers))

    deleted = await api.call("DELETE", f"/v1/webhooks/{hook['id']}")
    assert (deleted.status, deleted.text) == (204, "")
    assert await redis.hget(keys.webhooks, hook["id"]) is None
    assert await redis.hlen(keys.tenant("acme")) == 0
    for method in ("GET", "DELETE"):
        gone = await api.call(method, f"/v1/webhooks/{hook['id']}")
        assert gone.status == 404
        assert gone.body["error"]["code"] == "not_found"


async def test_rotation_without_grace_drops_the_old_secret(api: Api, client: Client) -> None:
    """With grace_s 0 only the new secret signs; an empty body means the default grace."""
    hook = await client.create_webhook("acme", "https://example.com/h")
    rotated = await api.call(
        "POST", f"/v1/webhooks/{hook['id']}/rotate-secret", json={"grace_s": 0}
    )
    assert rotated.status == 200
    stored = await client.rotate_secret(hook["id"], grace_s=0)
    assert stored["secret"] != rotated.body["secret"]
    default = await api.call("POST", f"/v1/webhooks/{hook['id']}/rotate-secret")
    assert default.status == 200
    missing = await api.call("POST", "/v1/webhooks/wh_00000000000000000000/rotate-secret")
    assert missing.status == 404


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    # method, path ("{hook}" is a real webhook's id), body, status, error code or field
    ("POST", "/v1/webhooks", b"{not json", 400, "malformed_request"),
    ("POST", "/v1/webhooks", [1, 2], 400, "malformed_request"),
    ("POST", "/v1/webhooks", {"tenant_id": "a", "url": "https://x.io", "colour": 1}, 422, "colour"),
    ("POST", "/v1/webhooks", {"url": "https://x.io"}, 422, "tenant_id"),
    ("POST", "/v1/webhooks", {"tenant_id": 5, "url": "https://x.io"}, 422, "tenant_id"),
    ("POST", "/v1/webhooks", {"tenant_id": "a", "url": "ftp://x.io"}, 422, "url"),
    ("POST", "/v1/webhooks", {"tenant_id": "a", "url": "file:///etc/passwd"}, 422, "url"),
    ("POST", "/v1/webhooks", {"tenant_id": "a", "url": "https://"}, 422, "url"),
    (
        "POST",
        "/v1/webhooks",
        {"tenant_id": "a", "url": "https://x.io", "event_types": []},
        422,
        "event_types",
    ),
    (
        "POST",
        "/v1/webhooks",
        {"tenant_id": "a", "url": "https://x.io", "event_types": [""]},
        422,
        "event_types",
    ),
    (
        "POST",
        "/v1/webhooks",
        {"tenant_id": "a", "url": "https://x.io", "event_types": "a"},
        422,
        "event_types",
    ),
    (
        "POST",
        "/v1/webhooks",
        {"tenant_id": "a", "url": "https://x.io", "secret": "hunter2"},
        422,
        "secret",
    ),
    (
        "POST",
        "/v1/webhooks",
        {"tenant_id": "a", "url": "https://x.io", "max_in_flight": "2"},
        422,
        "max_in_flight",
    ),
    (
        "POST",
        "/v1/webhooks",
        {"tenant_id": "a", "url": "https://x.io", "rate_limit": {"x": 1}},
        422,
        "rate_limit",
    ),
    (
        "POST",
        "/v1/webhooks",
        {"tenant_id": "a", "url": "https://x.io", "queue": "Bad Queue"},
        422,
        "queue",
    ),
    ("PATCH", "/v1/webhooks/{hook}", {"enabled": "yes"}, 422, "enabled"),
    ("PATCH", "/v1/webhooks/{hook}", {"paused": "yes"}, 422, "paused"),
    ("PATCH", "/v1/webhooks/{hook}", {"paused": None}, 422, "paused"),
    ("PATCH", "/v1/webhooks/{hook}", {"url": "gopher://x"}, 422, "url"),
    ("PATCH", "/v1/webhooks/{hook}", {"id": "wh_x"}, 422, "id"),
    ("PATCH", "/v1/webhooks/{hook}", b"", 400, "malformed_request"),
    ("POST", "/v1/webhooks/{hook}/rotate-secret", {"grace_s": "long"}, 422, "grace_s"),
    ("POST", "/v1/webhooks/{hook}/rotate-secret", {"grace_s": -1}, 422, "grace_s"),
    ("POST", "/v1/webhooks/{hook}/rotate-secret", {"grace": 1}, 422, "grace"),
    ("POST", "/v1/events", b"nope", 400, "malformed_request"),
    (
        "POST",
        "/v1/events",
        {"tenant_id": "acme", "event_type": "", "payload": {}},
        422,
        "event_type",
    ),
    (
        "POST",
        "/v1/events",
        {"tenant_id": "acme", "event_type": "a b", "payload": {}},
        422,
        "event_type",
    ),
    (
        "POST",
        "/v1/events",
        {"tenant_id": "acme", "event_type": 7, "payload": {}},
        422,
        "event_type",
    ),
    ("POST", "/v1/events", {"tenant_id": "acme", "event_type": "e"}, 422, "payload"),
    (
        "POST",
        "/v1/events",
        {"tenant_id": "acme", "event_type": "e", "payload": 1, "x": 1},
        422,
        "x",
    ),
    (
        "POST",
        "/v1/events",
        {"tenant_id": "acme", "event_type": "e", "payload": 1, "priority": "urgent"},
        422,
        "priority",
    ),
    (
        "POST",
        "/v1/events",
        {"tenant_id": "acme", "event_type": "e", "payload": 1, "deliver_at": "tomorrow"},
        422,
        "deliver_at",
    ),
    (
        "POST",
        "/v1/events",
        {"tenant_id": "acme", "event_type": "e", "payload": 1, "idempotency_key": ""},
        422,
        "idempotency_key",
    ),
    (
        "POST",
        "/v1/events",
        {"tenant_id": "acme", "event_type": "e", "payload": "x" * SMALL_PAYLOAD_LIMIT},
        413,
        "payload_too_large",
    ),
    ("POST", "/v1/events", b" " * (3 * SMALL_PAYLOAD_LIMIT + 70_000), 413, "payload_too_large"),
    (
        "POST",
        "/v1/webhooks/{hook}/deliveries",
        {"event_type": "e", "payload": 1, "tenant_id": "acme"},
        422,
        "tenant_id",
    ),
    (
        "POST",
        "/v1/webhooks/{hook}/deliveries",
        {"event_type": "e", "payload": "x" * SMALL_PAYLOAD_LIMIT},
        413,
        "payload_too_large",
    ),
    ("POST", "/v1/dlq/replay", {}, 422, "all"),
    ("POST", "/v1/dlq/replay", {"all": False}, 422, "all"),
    ("POST", "/v1/dlq/replay", {"ids": "job_x"}, 422, "ids"),
    ("POST", "/v1/dlq/replay", {"ids": []}, 422, "ids"),
    ("POST", "/v1/dlq/replay", {"ids": ["a"], "tenant_id": "t"}, 422, "tenant_id"),
    ("POST", "/v1/dlq/replay", {"all": True, "since": "last week"}, 422, "since"),
    ("POST", "/v1/dlq/replay", {"all": True, "since": 5}, 422, "since"),
    ("GET", "/v1/dlq?limit=ten", None, 422, "limit"),
    ("GET", "/v1/dlq?limit=0", None, 422, "limit"),
    ("GET", "/v1/dlq?cursor=abc", None, 422, "cursor"),
    ("GET", "/v1/dlq?page=2", None, 422, "page"),
    ("GET", "/v1/dlq?cursor=99999999999999999999-0", None, 422, "cursor"),
    ("DELETE", "/v1/dlq?older_than_s=soon", None, 422, "older_than_s"),
    ("DELETE", "/v1/dlq?older_than_s=-5&confirm=true", None, 422, "older_than_s"),
    ("DELETE", "/v1/dlq?confirm=yes", None, 422, "confirm"),
    ("GET", "/v1/webhooks?limit=101", None, 422, "limit"),
    ("GET", "/v1/webhooks?tenant_id=acme&cursor=0:0:0", None, 422, "cursor"),
    ("POST", "/v1/queues/Not%20A%20Queue/pause", None, 422, "queue"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "what"), BAD_REQUESTS)
async def test_bad_requests_are_refused_and_change_nothing(
    api: Api,
    client: Client,
    redis: aioredis.Redis,
    prefix: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    what: str,
) -> None:
    """Each bad request answers its code (naming the field) and leaves Redis as it was."""
    hook = await client.create_webhook("acme", "https://example.com/h", ["*"])
    await client.publish("acme", "seed", {"n": 1})
    before = await _snapshot(redis, prefix)
    raw = body if isinstance(body, bytes) else None
    answer = await api.call(
        method,
        path.replace("{hook}", hook["id"]),
        json=None if raw is not None else body,
        data=raw,
        headers={"Content-Type": "application/json"} if raw is not None else None,
    )
    assert answer.status == status, answer.text
    error = answer.body["error"]
    if status == 422:
        assert error["code"] == "invalid_field"
        assert error["message"].startswith(f"{what}:"), error
    else:
        assert error["code"] == what
    assert await _snapshot(redis, prefix) == before


# --- events ----------------------------------------------------------------------------------


async def test_publish_is_idempotent_per_tenant(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """The first publish answers 202, a repeat of its key 200 with the same answer, once queued."""
    hooks = [await client.create_webhook("acme", f"https://example.com/{i}") for i in range(2)]
    event = {
        "tenant_id": "acme",
        "event_type": "order.created",
        "payload": {"n": 1},
        "idempotency_key": "order-1",
    }
    first = await api.call("POST", "/v1/events", json=event)
    assert first.status == 202
    assert first.body["event_id"].startswith("evt_")
    assert sorted(j["webhook_id"] for j in first.body["jobs"]) == sorted(h["id"] for h in hooks)
    repeat = await api.call("POST", "/v1/events", json=event)
    assert (repeat.status, repeat.body) == (200, first.body)
    keys = Keys(prefix)
    assert len(await stream_entries(redis, keys.ready("default"))) == 2
    await client.create_webhook("globex", "https://example.com/g")
    other = await api.call("POST", "/v1/events", json={**event, "tenant_id": "globex"})
    assert other.status == 202
    assert other.body["event_id"] != first.body["event_id"]


async def test_publish_schedules_and_prioritises(api: Api, client: Client) -> None:
    """deliver_at makes a scheduled job; priority is kept on the job."""
    await client.create_webhook("acme", "https://example.com/h")
    later = datetime(2999, 1, 1, tzinfo=UTC).isoformat()
    answer = await api.call(
        "POST",
        "/v1/events",
        json={
            "tenant_id": "acme",
            "event_type": "e",
            "payload": [1],
            "deliver_at": later,
            "priority": "high",
        },
    )
    assert answer.status == 202
    job = await api.call("GET", f"/v1/jobs/{answer.body['jobs'][0]['id']}")
    assert job.body["state"] == "scheduled"
    assert job.body["priority"] == "high"
    assert job.body["next_attempt_at"].startswith("2999-01-01")


async def test_single_webhook_delivery(
    api: Api, client: Client, target: Target, workers: WorkerHarness
) -> None:
    """The deliveries route makes one job for exactly that webhook, subscribed or not."""
    only = await client.create_webhook("acme", target.url("/only"), ["order.paid"])
    await client.create_webhook("acme", target.url("/other"), ["*"])
    answer = await api.call(
        "POST",
        f"/v1/webhooks/{only['id']}/deliveries",
        json={"event_type": "order.created", "payload": {"x": 1}, "idempotency_key": "k1"},
    )
    assert answer.status == 202
    assert [j["webhook_id"] for j in answer.body["jobs"]] == [only["id"]]
    again = await api.call(
        "POST",
        f"/v1/webhooks/{only['id']}/deliveries",
        json={"event_type": "order.created", "payload": {"x": 1}, "idempotency_key": "k1"},
    )
    assert (again.status, again.body) == (200, answer.body)
    await workers.start()
    [req] = await target.wait_for(1, "/only")
    assert orjson.loads(req.body) == {"x": 1}
    assert target.count("/other") == 0
    await client.update_webhook(only["id"], enabled=False)
    disabled = await api.call(
        "POST", f"/v1/webhooks/{only['id']}/deliveries", json={"event_type": "e", "payload": 1}
    )
    assert (disabled.status, disabled.body["error"]["code"]) == (409, "conflict")
    unknown = await api.call(
        "POST", "/v1/webhooks/wh_nope/deliveries", json={"event_type": "e", "payload": 1}
    )
    assert unknown.status == 404


# --- jobs ------------------------------------------------------------------------------------


async def test_job_detail_shows_attempts(
    api: Api, client: Client, target: Target, workers: WorkerHarness
) -> None:
    """A job fails once then succeeds: the detail shows both attempts and the timestamps."""
    await client.create_webhook("acme", target.url())
    target.script("/hook", Reply(500, body=b"boom"), Reply(200))
    published = await api.call(
        "POST", "/v1/events", json={"tenant_id": "acme", "event_type": "e", "payload": {}}
    )
    job_id = published.body["jobs"][0]["id"]
    queued = await api.call("GET", f"/v1/jobs/{job_id}")
    assert queued.status == 200
    assert queued.body["state"] == "queued"
    assert queued.body["attempts"] == []
    await workers.start()

    async def delivered() -> dict[str, Any] | None:
        job = (await api.call("GET", f"/v1/jobs/{job_id}")).body
        return job if job["state"] == "delivered" else None

    job = await eventually(delivered)
    assert job["attempt"] == 2
    assert [a["status"] for a in job["attempts"]] == [500, 200]
    assert job["attempts"][0]["error"]
    assert job["last_status"] == 200
    for name in ("created_at", "processed_at", "finished_at"):
        assert job[name].endswith("Z")
    assert set(job) >= {
        "id",
        "webhook_id",
        "tenant_id",
        "event_type",
        "next_attempt_at",
        "last_error",
    }
    for missing in ("job_00000000000000000000.1", "nonsense"):
        answer = await api.call("GET", f"/v1/jobs/{missing}")
        assert (answer.status, answer.body["error"]["code"]) == (404, "not_found")


# --- DLQ -------------------------------------------------------------------------------------


async def _dead_jobs(
    client: Client,
    target: Target,
    workers: WorkerHarness,
    hooks: list[shapes.WebhookWithSecret],
    n: int,
) -> list[str]:
    """Publish ``n`` events to each hook (whose target answers 500) and wait until all are dead."""
    for hook in hooks:
        target.script("/" + hook["url"].rsplit("/", 1)[1], Reply(500, body=b"down"))
    ids: list[str] = []
    for i in range(n):
        for hook in hooks:
            new, answer = await client.deliver(hook["id"], "e", {"i": i})
            assert new
            ids += [j["id"] for j in answer["jobs"]]
    if not workers.workers:
        await workers.start(max_attempts=1)

    async def all_dead() -> bool:
        for job_id in ids:
            job = await client.get_job(job_id)
            if job is None or job["state"] != "dead":
                return False
        return True

    await eventually(all_dead, what="every job dead")
    return ids


async def test_dlq_list_pages_with_a_stable_cursor_and_filters(
    api: Api, client: Client, target: Target, workers: WorkerHarness
) -> None:
    """Paging by cursor walks every dead job once, in order; filters keep a webhook or tenant."""
    a = await client.create_webhook("acme", target.url("/a"))
    b = await client.create_webhook("globex", target.url("/b"))
    ids = await _dead_jobs(client, target, workers, [a, b], 3)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "4"} | ({"cursor": cursor} if cursor else {})
        page = await api.call("GET", "/v1/dlq", params=params)
        assert page.status == 200
        assert len(page.body["items"]) <= 4
        seen += [item["id"] for item in page.body["items"]]
        pages += 1
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
        # A replay between pages does not shift the next page.
        if pages == 1:
            await client.replay([page.body["items"][0]["id"]])
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))
    item = (await api.call("GET", "/v1/dlq", params={"webhook_id": b["id"]})).body["items"][0]
    assert item["webhook_id"] == b["id"]
    assert item["event_type"] == "e"
    assert item["attempt"] == 1
    assert "down" in item["last_error"]
    assert item["failed_at"].endswith("Z")
    only_b = await api.call("GET", "/v1/dlq", params={"webhook_id": b["id"], "limit": "100"})
    assert {i["webhook_id"] for i in only_b.body["items"]} == {b["id"]}
    assert len(only_b.body["items"]) == 3
    assert only_b.body["next_cursor"] is None
    only_acme = await api.call("GET", "/v1/dlq", params={"tenant_id": "acme"})
    assert {i["tenant_id"] for i in only_acme.body["items"]} == {"acme"}
    capped = await api.call("GET", "/v1/dlq", params={"limit": "5000"})
    assert capped.status == 200


async def test_dlq_inspect_and_replay_by_ids(
    api: Api,
    client: Client,
    redis: aioredis.Redis,
    prefix: str,
    target: Target,
    workers: WorkerHarness,
) -> None:
    """Inspect shows the payload and last error; replay puts jobs back with history kept."""
    hook = await client.create_webhook("acme", target.url("/r"))
    ids = await _dead_jobs(client, target, workers, [hook], 2)
    dead = await api.call("GET", f"/v1/dlq/{ids[0]}")
    assert dead.status == 200
    assert dead.body["payload"] == {"i": 0}
    assert dead.body["state"] == "dead"
    assert "down" in dead.body["last_error"]
    assert (await api.call("GET", "/v1/dlq/job_00000000000000000000.1")).status == 404
    target.script("/r", Reply(200))
    replayed = await api.call("POST", "/v1/dlq/replay", json={"ids": [ids[0], "job_nope"]})
    assert (replayed.status, replayed.body) == (
        200,
        {"replayed": 1, "not_found": ["job_nope"], "not_dead": []},
    )
    assert len(await stream_entries(redis, Keys(prefix).dlq)) == 1

    async def delivered() -> shapes.Job | None:
        job = await client.get_job(ids[0])
        return job if job and job["state"] == "delivered" else None

    job = await eventually(delivered)
    assert [a["status"] for a in job["attempts"]] == [500, 200]
    assert (await api.call("GET", f"/v1/dlq/{ids[0]}")).status == 404
    again = await api.call("POST", "/v1/dlq/replay", json={"ids": [ids[0]]})
    assert again.body == {"replayed": 0, "not_found": [], "not_dead": [ids[0]]}


async def test_dlq_replay_all_with_filters_and_since(
    api: Api, client: Client, target: Target, workers: WorkerHarness
) -> None:
    """Replay all honours the webhook filter and since (dead-lettered at or after it)."""
    a = await client.create_webhook("acme", target.url("/a"))
    b = await client.create_webhook("acme", target.url("/b"))
    early = await _dead_jobs(client, target, workers, [a, b], 2)
    await asyncio.sleep(0.05)  # a distinct millisecond for `since`
    since = datetime.now(UTC).isoformat()
    late = await _dead_jobs(client, target, workers, [a, b], 1)
    await workers.stop()  # replayed jobs stay queued, so the test can see which went back
    only_a_late = await api.call(
        "POST", "/v1/dlq/replay", json={"all": True, "webhook_id": a["id"], "since": since}
    )
    assert only_a_late.body == {"replayed": 1, "skipped": 0, "skipped_reasons": {}}
    states = {j: (await client.get_job(j) or dict[str, Any]()).get("state") for j in early + late}
    late_a = [
        j
        for j in late
        if (await client.get_job(j) or dict[str, Any]()).get("webhook_id") == a["id"]
    ]
    assert [j for j, state in states.items() if state == "queued"] == late_a
    assert all(state == "dead" for j, state in states.items() if j not in late_a)
    future = await api.call(
        "POST", "/v1/dlq/replay", json={"all": True, "since": "9999-12-31T23:59:59Z"}
    )
    assert (future.status, future.body["replayed"]) == (200, 0)
    everything = await api.call(
        "POST", "/v1/dlq/replay", json={"all": True, "since": "1900-01-01T00:00:00Z"}
    )
    assert everything.body["replayed"] == len(early) + len(late) - 1
    assert (await api.call("GET", "/v1/dlq")).body == {"items": [], "next_cursor": None}


async def test_dlq_purge_needs_confirmation_and_respects_retention(
    client: Client, redis: aioredis.Redis, prefix: str, target: Target, workers: WorkerHarness
) -> None:
    """409 with would_purge until confirmed; only entries older than both ages go, with records."""
    hook = await client.create_webhook("acme", target.url("/p"))
    old = await _dead_jobs(client, target, workers, [hook], 2)
    await asyncio.sleep(1.2)  # the old entries must be older than the 1 s retention below
    young = await _dead_jobs(client, target, workers, [hook], 1)
    keys = Keys(prefix)
    strict = Client.from_url(_url(client), prefix=prefix, dlq_retention_s=3600)
    _app, api = await start_api(strict)
    try:
        refused = await api.call("DELETE", "/v1/dlq", params={"older_than_s": "1"})
        assert refused.status == 409
        assert refused.body["error"]["code"] == "confirmation_required"
        assert refused.body["would_purge"] == 0
        kept = await api.call("DELETE", "/v1/dlq", params={"older_than_s": "1", "confirm": "true"})
        assert kept.body == {"purged": 0, "retention_s": 3600, "within_retention": 3}
    finally:
        await api.close()
        await strict.close()
    client.dlq_retention_s = 1.0
    _app, api = await start_api(client)
    try:
        before = await _snapshot(redis, prefix)
        counted = await api.call("DELETE", "/v1/dlq", params={"older_than_s": "0.5"})
        assert (counted.status, counted.body["would_purge"]) == (409, 2)
        assert await _snapshot(redis, prefix) == before
        purged = await api.call(
            "DELETE", "/v1/dlq", params={"older_than_s": "0.5", "confirm": "true"}
        )
        assert (purged.status, purged.body) == (
            200,
            {"purged": 2, "retention_s": 1, "within_retention": 1},
        )
    finally:
        await api.close()
    left = [e[1][b"j"].decode() for e in await stream_entries(redis, keys.dlq)]
    assert left == young
    for job_id in old:
        assert await redis.hget(keys.jobs, job_id) is None
    assert await redis.hget(keys.jobs, young[0]) is not None


async def _entry_missing(client: Client, redis: aioredis.Redis, prefix: str) -> str:
    """A never-attempted job whose stream entry was deleted under the daemon, dead-lettered
    as entry_missing by the orphan sweep (with no webhook and no payload), as in production."""
    await client.create_webhook("acme", "https://hooks.example.com/x")
    job_id = str((await client.publish("acme", "a.b", {"n": 1}))["jobs"][0]["id"])
    ready = Keys(prefix).ready("default")
    [(sid, _fields)] = await stream_entries(redis, ready)
    await redis.xdel(ready, sid)
    assert (await delays.find_orphans(client.store, cursor="0", count=1000)).dead == [job_id]
    return job_id


async def _work_and_sweep(store: Store) -> None:
    """One turn of what a worker and the orphan sweep do: claim what is ready (quarantining
    what cannot be sent), then put back or dead-letter jobs whose entry is gone."""
    for stream in streams_of("default"):
        await streams.ensure_group(store, stream)
    _claims, malformed = await streams.claim_new(store, streams_of("default"), "w", budget=100)
    for stream, bad in malformed:
        await streams.quarantine(store, stream, "malformed", [bad])
    await delays.find_orphans(store, cursor="0", count=1000)


async def test_replaying_an_entry_missing_job_is_refused_and_changes_nothing(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A dead job whose payload was lost cannot be replayed: by ids the Client and the API
    refuse it with the reason, replaying none of the ids and changing nothing."""
    job_id = await _entry_missing(client, redis, prefix)
    before = await _snapshot(redis, prefix)
    with pytest.raises(NotReplayable) as refused:
        await client.replay([job_id])
    assert refused.value.code == "not_replayable"
    assert [(r["id"], r["reason"]) for r in refused.value.refused] == [(job_id, "payload_lost")]
    assert "payload was lost" in refused.value.message
    answer = await api.call("POST", "/v1/dlq/replay", json={"ids": [job_id, "job_nope"]})
    assert answer.status == 409
    assert answer.body["error"]["code"] == "not_replayable"
    assert job_id in answer.body["error"]["message"]
    assert [(r["id"], r["reason"]) for r in answer.body["refused"]] == [(job_id, "payload_lost")]
    assert await _snapshot(redis, prefix) == before


async def test_replay_all_skips_an_entry_missing_job_so_the_dlq_never_grows(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Replay all leaves a job whose payload was lost in the DLQ and says so; workers and the
    orphan sweep then never see it, so it cannot loop back into the DLQ."""
    job_id = await _entry_missing(client, redis, prefix)
    dlq_before = await stream_entries(redis, Keys(prefix).dlq)
    assert (await client.replay_matching())["replayed"] == 0
    answer = await api.call("POST", "/v1/dlq/replay", json={"all": True})
    assert (answer.status, answer.body) == (
        200,
        {"replayed": 0, "skipped": 1, "skipped_reasons": {"payload_lost": 1}},
    )
    for _ in range(3):
        await _work_and_sweep(client.store)
    assert await stream_entries(redis, Keys(prefix).dlq) == dlq_before
    job = await client.get_job(job_id)
    assert job is not None
    assert (job["state"], job["dead_reason"]) == ("dead", "entry_missing")


async def test_replay_refuses_jobs_of_a_deleted_or_disabled_webhook(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str, workers: WorkerHarness
) -> None:
    """A dead job whose webhook was deleted, or is disabled, is refused by ids (nothing is
    replayed, not even the good ids with it) and skipped by all; enabling the webhook lets
    its job go back."""
    gone = await client.create_webhook("acme", "https://hooks.example.com/gone")
    off = await client.create_webhook("acme", "https://hooks.example.com/off")
    gone_job = (await client.deliver(gone["id"], "e", {"n": 1}))[1]["jobs"][0]["id"]
    off_job = (await client.deliver(off["id"], "e", {"n": 2}))[1]["jobs"][0]["id"]
    await client.delete_webhook(gone["id"])
    await client.update_webhook(off["id"], enabled=False)
    await workers.start()

    async def both_dead() -> bool:
        jobs = [await client.get_job(j) for j in (gone_job, off_job)]
        return all(j is not None and j["state"] == "dead" for j in jobs)

    await eventually(both_dead, what="both jobs dead")
    await workers.stop()
    before = await _snapshot(redis, prefix)
    answer = await api.call("POST", "/v1/dlq/replay", json={"ids": [gone_job, off_job]})
    assert (answer.status, answer.body["error"]["code"]) == (409, "not_replayable")
    assert sorted((r["id"], r["reason"]) for r in answer.body["refused"]) == sorted(
        [(gone_job, "webhook_deleted"), (off_job, "webhook_disabled")]
    )
    everything = await api.call("POST", "/v1/dlq/replay", json={"all": True})
    assert everything.body == {
        "replayed": 0,
        "skipped": 2,
        "skipped_reasons": {"webhook_deleted": 1, "webhook_disabled": 1},
    }
    assert await _snapshot(redis, prefix) == before
    await client.update_webhook(off["id"], enabled=True)
    with pytest.raises(NotReplayable):
        await client.replay([off_job, gone_job])
    assert (await client.replay([off_job]))["replayed"] == 1
    job = await client.get_job(off_job)
    assert job is not None
    assert job["state"] == "queued"


def _url(client: Client) -> str:
    kwargs = client.store.redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


# --- queues ----------------------------------------------------------------------------------


async def test_pause_stops_delivery_within_a_second_and_resume_restarts_it(
    api: Api,
    client: Client,
    redis: aioredis.Redis,
    prefix: str,
    target: Target,
    workers: WorkerHarness,
) -> None:
    """A paused queue keeps accepting and stops sending on every worker; resume sends again."""
    await client.create_webhook("acme", target.url())
    await workers.start()
    await workers.start()
    paused = await api.call("POST", "/v1/queues/default/pause")
    assert (paused.status, paused.body) == (200, {"queue": "default", "paused": True})
    assert await redis.smembers(Keys(prefix).paused) == {b"default"}
    await asyncio.sleep(1.0)  # the contract's bound: every worker follows within 1 s
    published = await api.call(
        "POST", "/v1/events", json={"tenant_id": "acme", "event_type": "e", "payload": {}}
    )
    assert published.status == 202
    status = (await api.call("GET", "/v1/status")).body
    assert status["paused"] == ["default"]
    await asyncio.sleep(1.0)  # nothing may arrive while paused
    assert target.count() == 0
    job = await client.get_job(published.body["jobs"][0]["id"])
    assert job is not None
    assert job["state"] == "queued"
    resumed = await api.call("POST", "/v1/queues/default/resume")
    assert (resumed.status, resumed.body) == (200, {"queue": "default", "paused": False})
    await target.wait_for(1, timeout_s=3)
    assert await redis.exists(Keys(prefix).paused) == 0


# --- status, readiness, metrics --------------------------------------------------------------


async def test_status_counts_are_true_across_two_daemons(
    client: Client, redis_url: str, prefix: str, target: Target, logs_dir: Path
) -> None:
    """Two daemons deliver; the admin API of one reports both workers and every count."""
    port = free_port()
    env = daemon_env(
        redis_url,
        prefix,
        admin_listen=f"127.0.0.1:{port}",
        admin_token=TOKEN,
        delivery_max_attempts="1",
    )
    await client.create_webhook("acme", target.url("/ok"))
    bad = await client.create_webhook("acme", target.url("/bad"), ["bad"])
    target.script("/bad", Reply(500))
    target.script("/ok", Reply(200, delay_s=0.05))
    first = Daemon(env, logs_dir / "first.log").start()
    second = Daemon({**env, "DISPATCHER_ADMIN_LISTEN": ""}, logs_dir / "second.log").start()
    import aiohttp  # noqa: PLC0415

    api = Api(aiohttp.ClientSession(), f"http://127.0.0.1:{port}")
    try:

        async def both_workers() -> dict[str, Any] | None:
            try:
                answer = await api.call("GET", "/v1/status")
            except OSError:
                return None
            return answer.body if len(answer.body["workers"]) == 2 else None

        status = await eventually(both_workers, timeout_s=20, interval_s=0.1)
        pids = {w["pid"] for w in status["workers"]}
        assert pids == {first.process.pid, second.process.pid}  # type: ignore[union-attr]
        assert all(w["host"] and w["started_at"] and w["in_flight"] == 0 for w in status["workers"])
        assert "admin.listening" in first.log
        for n in range(20):
            await client.publish("acme", "order", {"n": n})
        await client.deliver(bad["id"], "bad", {})
        scheduled = datetime(2999, 1, 1, tzinfo=UTC)
        await client.publish("acme", "order", {}, deliver_at=scheduled)
        await target.wait_for(21, timeout_s=20)

        async def settled() -> dict[str, Any] | None:
            body = (await api.call("GET", "/v1/status")).body
            done = body["delivered_recent"]["count"] == 20 and body["failed_recent"]["count"] == 1
            return body if done else None

        status = await eventually(settled, timeout_s=10, interval_s=0.1)
        assert (status["queued"], status["active"], status["scheduled"]) == (0, 0, 1)
        assert status["dlq_size"] == 1
        assert status["avg_processing_ms"] > 0
        assert status["redis"]["redis_version"]
        assert status["redis"]["role"] == "master"
        assert status["redis"]["maxmemory_policy"] == "noeviction"
        assert isinstance(status["redis"]["used_memory"], int)
        second.stop()
        await eventually(
            lambda: _workers_listed(api, 1), timeout_s=10, what="the stopped worker forgotten"
        )
    finally:
        await api.session.close()
        first.stop()
        second.stop()
    assert await client.store.redis.hlen(Keys(prefix).workers) == 0


async def test_daemon_without_a_token_warns_and_refuses(
    redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A daemon serving the API with no token logs admin.no_token and answers /v1 with 401."""
    port = free_port()
    env = daemon_env(redis_url, prefix, admin_listen=f"127.0.0.1:{port}")
    daemon = Daemon(env, logs_dir / "no-token.log").start()
    import aiohttp  # noqa: PLC0415

    api = Api(aiohttp.ClientSession(), f"http://127.0.0.1:{port}")
    try:

        async def healthy() -> bool:
            try:
                return (await api.call("GET", "/healthz", token=None)).status == 200
            except OSError:
                return False

        await eventually(healthy, timeout_s=20, interval_s=0.1)
        refused = await api.call("GET", "/v1/status")
        assert refused.status == 401
        assert "admin.no_token" in daemon.log
        assert f"127.0.0.1:{port}" in daemon.log
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        assert "admin.stopped" in daemon.log
    finally:
        await api.session.close()
        daemon.stop()


async def _workers_listed(api: Api, n: int) -> bool:
    return len((await api.call("GET", "/v1/status")).body["workers"]) == n


async def test_queued_and_active_counts_come_from_the_streams(
    api: Api, client: Client, target: Target, workers: WorkerHarness
) -> None:
    """Jobs waiting count as queued, jobs held by a worker as active."""
    await client.create_webhook("acme", target.url())
    target.script("/hook", Reply(200, delay_s=3))
    for n in range(5):
        await client.publish("acme", "e", {"n": n})
    status = (await api.call("GET", "/v1/status")).body
    assert (status["queued"], status["active"]) == (5, 0)
    await workers.start(concurrency=2, timeout_s=5, stall_timeout_s=10)
    await target.wait_for(2)
    status = (await api.call("GET", "/v1/status")).body
    assert (status["queued"], status["active"]) == (3, 2)


async def test_readyz_is_503_when_redis_is_down(prefix: str) -> None:
    """Pointed at a closed port, /readyz answers 503 and /v1 calls answer redis_unavailable."""
    down = Client.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    _app, api = await start_api(down)
    try:
        ready = await api.call("GET", "/readyz", token=None)
        assert ready.status == 503
        assert ready.body["error"]["code"] == "redis_unavailable"
        assert (await api.call("GET", "/healthz", token=None)).status == 200
        status = await api.call("GET", "/v1/status")
        assert (status.status, status.body["error"]["code"]) == (503, "redis_unavailable")
        metrics = await api.call("GET", "/metrics", token=None)
        assert metrics.status == 200
        assert "dispatcher_redis_up 0" in metrics.text
    finally:
        await api.close()
        await down.close()


_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})?'
    r" (-?[0-9.]+(e[+-]?[0-9]+)?|[+-]Inf|NaN)$"
)


async def test_metrics_is_prometheus_text(
    client: Client, target: Target, workers: WorkerHarness
) -> None:
    """/metrics parses as the Prometheus text format, with queue gauges read at scrape."""
    await client.create_webhook("acme", target.url())
    await workers.start()
    await client.publish("acme", "e", {})
    await target.wait_for(1)
    await client.publish("acme", "later", {}, deliver_at=datetime(2999, 1, 1, tzinfo=UTC))
    _app, api = await start_api(client, metrics=workers.metrics)
    try:
        answer = await eventually(lambda: _metrics_with(api, "dispatcher_deliveries_total"))
    finally:
        await api.close()
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families: dict[str, str] = {}
    for line in answer.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in families, f"{name} declared twice"
            families[name] = kind
        elif not line.startswith("# HELP "):
            assert _SAMPLE.match(line), line
    assert families["dispatcher_queue_depth"] == "gauge"
    assert families["dispatcher_attempt_duration_seconds"] == "histogram"
    assert 'dispatcher_queue_scheduled{queue="default"} 1' in answer.text
    assert "dispatcher_dlq_size 0" in answer.text
    assert 'dispatcher_deliveries_total{outcome="delivered",status="2xx"} 1' in answer.text


async def _metrics_with(api: Api, name: str) -> Any:
    answer = await api.call("GET", "/metrics", token=None)
    return answer if name in answer.text else None


async def test_an_oversized_body_is_refused_before_the_token_is_checked(api: Api) -> None:
    """A declared body over the limit answers 413 with or without a token; a small one without
    a token answers 401 with WWW-Authenticate (one middleware checks both, in this order)."""
    big = b" " * (3 * SMALL_PAYLOAD_LIMIT + 70_000)
    for token in (None, "wrong", True):
        answer = await api.call("POST", "/v1/events", data=big, token=token)
        assert (answer.status, answer.body["error"]["code"]) == (413, "payload_too_large")
    small = await api.call("POST", "/v1/events", data=b"{}", token=None)
    assert (small.status, small.headers["WWW-Authenticate"]) == (401, "Bearer")
