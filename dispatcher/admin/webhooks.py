"""``/v1/webhooks``: create, list, get, patch, delete, rotate the secret, delivery stats, a
test send."""

from __future__ import annotations

from aiohttp import web

from dispatcher.admin import bodies
from dispatcher.admin.shared import CLIENT, METRICS, json_response
from dispatcher.errors import InvalidField, TooManyRequests
from dispatcher.model import CREATABLE, PATCHABLE
from dispatcher.testsend import result_of

TEST_FIELDS = frozenset({"event_type", "payload"})  # the optional body of a test send
TEST_SENDS_METRIC = "dispatcher_test_sends_total"


async def create(request: web.Request) -> web.Response:
    body = bodies.fields(await bodies.json_object(request), CREATABLE, ("tenant_id", "url"))
    tenant_id, url = body.pop("tenant_id"), body.pop("url")
    event_types = body.pop("event_types", ["*"])
    if not isinstance(event_types, list):
        raise InvalidField("event_types", "must be a non-empty list of event types or '*'")
    hook = await request.app[CLIENT].create_webhook(tenant_id, url, event_types, **body)
    return json_response(hook, 201)


async def list_(request: web.Request) -> web.Response:
    """A tenant's webhooks (one page), or a page of every tenant's: at most ``limit`` (100)
    and 16 HSCANs (``queue/webhooks.py::page_webhooks``)."""
    params = bodies.query(request, {"tenant_id", "limit", "cursor"})
    answer = await request.app[CLIENT].list_webhooks(
        params.get("tenant_id"),
        limit=bodies.whole(params, "limit", 100),
        cursor=params.get("cursor"),
    )
    return json_response(answer)


async def get(request: web.Request) -> web.Response:
    return json_response(await request.app[CLIENT].get_webhook(request.match_info["id"]))


async def patch(request: web.Request) -> web.Response:
    changes = bodies.fields(await bodies.json_object(request), PATCHABLE)
    hook = await request.app[CLIENT].update_webhook(request.match_info["id"], **changes)
    return json_response(hook)


async def delete(request: web.Request) -> web.Response:
    await request.app[CLIENT].delete_webhook(request.match_info["id"])
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    grace_s, scheme = bodies.rotation(await bodies.json_object(request, optional=True))
    hook = await request.app[CLIENT].rotate_secret(request.match_info["id"], grace_s, scheme)
    return json_response(hook)


async def stats(request: web.Request) -> web.Response:
    params = bodies.query(request, {"window"})
    answer = await request.app[CLIENT].webhook_stats(
        request.match_info["id"], params.get("window", "1h")
    )
    return json_response(answer)


async def jobs(request: web.Request) -> web.Response:
    """Its recent jobs from a bounded read of its shard (``queue/recent.py``)."""
    params = bodies.query(request, {"limit"})
    answer = await request.app[CLIENT].webhook_jobs(
        request.match_info["id"], bodies.whole(params, "limit", 20)
    )
    return json_response(answer)


async def test(request: web.Request) -> web.Response:
    """One signed attempt now through the daemon's sender (``Client.test_webhook``); counted
    in ``dispatcher_test_sends_total{result}``."""
    body = bodies.fields(await bodies.json_object(request, optional=True), TEST_FIELDS)
    metrics = request.app[METRICS]
    try:
        answer = await request.app[CLIENT].test_webhook(request.match_info["id"], **body)
    except TooManyRequests:
        metrics.inc(TEST_SENDS_METRIC, result="limited")
        raise
    metrics.inc(TEST_SENDS_METRIC, result=result_of(answer))
    return json_response(answer)
