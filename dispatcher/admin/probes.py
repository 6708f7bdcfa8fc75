"""Unauthenticated routes: ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from dispatcher.admin.shared import (
    CLIENT,
    LIVENESS,
    METRICS,
    OPENAPI,
    error_response,
    json_response,
)
from dispatcher.errors import DispatcherError
from dispatcher.metrics import gauge_family

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

READY_TIMEOUT_S = 2.0


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while Redis answers and every essential loop of the worker shows progress (the
    same judgement as systemd's watchdog): 503 names what is wrong."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await request.app[CLIENT].ping()
    except (DispatcherError, TimeoutError):
        return error_response(503, "redis_unavailable", "Redis does not answer PING")
    stalled = request.app[LIVENESS].stalled()
    if stalled:
        loops = ", ".join(f"{name} ({age:g} s)" for name, age in sorted(stalled.items()))
        return error_response(
            503,
            "loop_stalled",
            f"no progress in these delivery loops: {loops}; see the log",
            {"stalled": stalled},
        )
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """The process counters, plus queue gauges read from Redis at scrape time, in OpenMetrics
    when the scraper's Accept asks for it, else in the Prometheus text format."""
    accept = request.headers.get(hdrs.ACCEPT, "")
    body, content_type = request.app[METRICS].exposition(accept, await _queue_gauges(request))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _queue_gauges(request: web.Request) -> list[Metric]:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            gauges = await request.app[CLIENT].gauges()
    except (DispatcherError, TimeoutError, OSError):
        return [
            gauge_family("dispatcher_redis_up", "Whether Redis answered this scrape.", [({}, 0)])
        ]
    counts, dlq_size = gauges.counts, gauges.dlq_size
    families = [
        ("dispatcher_queue_depth", "Jobs waiting in the ready stream.", "queued"),
        ("dispatcher_queue_active", "Jobs claimed by a worker and not settled.", "active"),
        ("dispatcher_queue_scheduled", "Jobs waiting for a retry or their time.", "scheduled"),
    ]
    parts = [
        gauge_family(name, text, [({"queue": c.queue}, getattr(c, attr)) for c in counts])
        for name, text, attr in families
    ]
    parts.append(gauge_family("dispatcher_dlq_size", "Entries in the DLQ.", [({}, dlq_size)]))
    parts.append(
        gauge_family("dispatcher_redis_up", "Whether Redis answered this scrape.", [({}, 1)])
    )
    return parts


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
