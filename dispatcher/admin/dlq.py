"""``/v1/dlq``: list with a cursor, inspect, replay, purge (with confirmation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.admin import bodies
from dispatcher.admin.app import CLIENT, json_response
from dispatcher.errors import ConfirmationRequired

if TYPE_CHECKING:
    from aiohttp import web


async def list_(request: web.Request) -> web.Response:
    params = bodies.query(request, {"limit", "cursor", "webhook_id", "tenant_id"})
    page = await request.app[CLIENT].list_dlq(
        limit=bodies.whole(params, "limit", 50),
        cursor=params.get("cursor"),
        webhook_id=params.get("webhook_id"),
        tenant_id=params.get("tenant_id"),
    )
    return json_response(page)


async def inspect(request: web.Request) -> web.Response:
    return json_response(await request.app[CLIENT].inspect_dlq(request.match_info["id"]))


async def replay(request: web.Request) -> web.Response:
    wanted = bodies.replay(await bodies.json_object(request))
    client = request.app[CLIENT]
    if wanted.ids is not None:
        replayed = await client.replay(wanted.ids)
    else:
        replayed = await client.replay_matching(
            webhook_id=wanted.webhook_id, tenant_id=wanted.tenant_id, since=wanted.since
        )
    return json_response({"replayed": replayed})


async def purge(request: web.Request) -> web.Response:
    params = bodies.query(request, {"older_than_s", "confirm"})
    older_than_s = bodies.seconds(params, "older_than_s", 0.0)
    client = request.app[CLIENT]
    if not bodies.flag(params, "confirm"):
        would_purge = await client.purge_dlq(older_than_s, confirm=False)
        raise ConfirmationRequired(
            f"purging deletes {would_purge} dead jobs for good; repeat with confirm=true",
            would_purge=would_purge,
        )
    return json_response({"purged": await client.purge_dlq(older_than_s, confirm=True)})
