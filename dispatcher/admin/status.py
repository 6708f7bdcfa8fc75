"""``GET /v1/status``: the dashboard (counts, recent outcomes, Redis, live workers, alerts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispatcher.admin.shared import ALERTS, CLIENT, json_response

if TYPE_CHECKING:
    from aiohttp import web


async def get(request: web.Request) -> web.Response:
    answer: dict[str, Any] = dict(await request.app[CLIENT].status())
    # The alerts live in the daemon serving this API, which judges them every few seconds.
    answer["alerts"] = request.app[ALERTS].active()
    return json_response(answer)
