"""``POST /v1/queues/{name}/pause`` and ``/resume``: every worker follows within a second.

The answers and errors are the ``Client``'s (404 ``unknown_queue`` for a queue nothing knows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.admin.shared import CLIENT, json_response

if TYPE_CHECKING:
    from aiohttp import web


async def pause(request: web.Request) -> web.Response:
    return json_response(await request.app[CLIENT].pause(request.match_info["name"]))


async def resume(request: web.Request) -> web.Response:
    return json_response(await request.app[CLIENT].resume(request.match_info["name"]))
