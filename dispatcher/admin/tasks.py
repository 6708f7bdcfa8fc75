"""``GET /v1/tasks`` and ``POST /v1/tasks/{name}/run``: the registered tasks, and one run now.

The answers and errors are the ``Client``'s (404 ``not_found`` for a name no daemon
registered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.admin.shared import CLIENT, json_response

if TYPE_CHECKING:
    from aiohttp import web


async def list_(request: web.Request) -> web.Response:
    return json_response(await request.app[CLIENT].list_tasks())


async def run(request: web.Request) -> web.Response:
    """Enqueue one run now, with no arguments: 202 with its job id."""
    answer = await request.app[CLIENT].enqueue_task(request.match_info["name"])
    return json_response(answer, status=202)
