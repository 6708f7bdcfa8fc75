"""``GET /v1/status``: the dashboard (counts, recent outcomes, Redis, live workers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.admin.app import CLIENT, json_response

if TYPE_CHECKING:
    from aiohttp import web


async def get(request: web.Request) -> web.Response:
    return json_response(await request.app[CLIENT].status())
