"""``/v1/operations/{id}``: the progress of a background DLQ replay or purge, and the task
that drives them in this admin process (``dispatcher.operations.Runner``)."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from dispatcher.admin.shared import CLIENT, json_response
from dispatcher.errors import NotFound
from dispatcher.operations import Runner, begin
from dispatcher.queue import operations

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from dispatcher.queue.dlq_ops import Progress, PurgePlan, ReplayPlan

RUNNER: Final = web.AppKey("operations_runner", Runner)


def install(app: web.Application) -> None:
    """Run this app's operation driver while the app is served."""
    client = app[CLIENT]
    app[RUNNER] = Runner(client.store, regions=client.regions)
    app.cleanup_ctx.append(_drive)


async def _drive(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[RUNNER].run())
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def get(request: web.Request) -> web.Response:
    op = await operations.get(request.app[CLIENT].store, request.match_info["id"])
    if op is None:
        raise NotFound(f"no operation {request.match_info['id']!r}")
    return json_response(op.to_wire())


async def carry_on(
    request: web.Request,
    kind: str,
    plan: ReplayPlan | PurgePlan,
    first: Progress,
    answer: dict[str, Any],
) -> web.Response:
    """202: what the inline page did, and the operation that does the rest."""
    op = await begin(request.app[CLIENT].store, kind, plan, first)
    request.app[RUNNER].hand(op.id)
    response = json_response({**answer, "operation": op.to_wire()}, status=202)
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return response
