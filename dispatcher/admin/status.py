"""``GET /v1/status``: the dashboard (counts, recent outcomes, Redis, live workers, alerts);
``GET /v1/stats``: outcomes per minute over the last hour (one pipeline of 60 HGETALLs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispatcher.admin import bodies
from dispatcher.admin.shared import ALERTS, CLIENT, json_response

if TYPE_CHECKING:
    from aiohttp import web


async def get(request: web.Request) -> web.Response:
    answer: dict[str, Any] = dict(await request.app[CLIENT].status())
    # The alerts live in the daemon serving this API, which judges them every few seconds.
    answer["alerts"] = request.app[ALERTS].active()
    return json_response(answer)


async def stats(request: web.Request) -> web.Response:
    params = bodies.query(request, {"window"})
    return json_response(await request.app[CLIENT].stats(params.get("window", "1h")))
