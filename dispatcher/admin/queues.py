"""``POST /v1/queues/{name}/pause`` and ``/resume``: every worker follows within a second."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.admin.app import CLIENT, json_response

if TYPE_CHECKING:
    from aiohttp import web


async def pause(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[CLIENT].pause(name)
    return json_response({"queue": name, "paused": True})


async def resume(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[CLIENT].resume(name)
    return json_response({"queue": name, "paused": False})
