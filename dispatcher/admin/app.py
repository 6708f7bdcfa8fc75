"""The admin application: the auth and error middlewares, one route table, serve().

Handlers are thin: they read a request through ``bodies``, call the ``Client`` (which shares
the queue layer with the Python API, so both answer alike) and return JSON. The app keys and
the JSON answers they share with this module live in ``shared``.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from dispatcher.admin import (
    dlq,
    events,
    jobs,
    operations,
    panel,
    probes,
    queues,
    status,
    tasks,
    webhooks,
)
from dispatcher.admin.shared import (
    ALERTS,
    CLIENT,
    LIVENESS,
    METRICS,
    OPENAPI,
    error_response,
)
from dispatcher.alerts import Alerts
from dispatcher.config import AlertsConfig
from dispatcher.errors import DispatcherError, PayloadTooLarge, TooManyRequests, Unauthorized
from dispatcher.liveness import Liveness

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp.typedefs import Middleware

    from dispatcher.client import Client
    from dispatcher.metrics import Metrics

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger()

#: Room around the largest payload for the rest of an event body and JSON white space.
BODY_OVERHEAD_BYTES = 64 * 1024
#: How long a stopping server lets running admin calls finish.
SHUTDOWN_TIMEOUT_S = 5.0

_HTTP_CODES = {
    400: "malformed_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


@dataclass(frozen=True, slots=True)
class Deps:
    """What the admin API needs from the daemon (or a test)."""

    client: Client
    metrics: Metrics
    token: str | None
    alerts: Alerts | None = None  # the daemon's backlog alerts; None: none is ever raised
    liveness: Liveness | None = None  # the worker's essential loops; None: not followed


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as ``{"error": {code, message}}`` with an honest status."""
    try:
        return await handler(request)
    except DispatcherError as exc:
        response = error_response(exc.http_status, exc.code, exc.message, exc.details())
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = "Bearer"
        elif isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:  # noqa: PLR2004 - redirects and successes pass through
            raise
        response = error_response(
            exc.status, _HTTP_CODES.get(exc.status, "http_error"), _sentence(exc)
        )
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("admin.internal_error", method=request.method, path=request.path)
        return error_response(500, "internal_error", "internal error; the daemon's log has it")


def _sentence(exc: web.HTTPException) -> str:
    if exc.status == 404:  # noqa: PLR2004
        return "no such route; GET /openapi.json lists them"
    if exc.status == 405:  # noqa: PLR2004
        return f"method not allowed; allowed: {exc.headers.get('Allow', 'none')}"
    return exc.text or exc.reason


def _guard(limit: int, token: str | None) -> Middleware:
    """The body's declared size, then the bearer token on /v1: one middleware, since each
    layer costs every request a call (this API takes publishes at thousands a second)."""
    expected = token.encode("utf-8", "surrogateescape") if token else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A declared length over the limit is refused before a byte of the body is read;
        # a chunked body is cut off by client_max_size while it is read.
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"the body is {request.content_length} bytes, over {limit}")
        if request.path == "/v1" or request.path.startswith("/v1/"):
            if expected is None:
                raise Unauthorized(
                    "no admin token is configured (admin.token, admin.token_file or "
                    "DISPATCHER_ADMIN_TOKEN), so every /v1 call is refused"
                )
            header = request.headers.get("Authorization", "")
            # The scheme is case-insensitive (RFC 9110); whitespace around the token is not
            # part of it.
            scheme, _, given = header.strip().partition(" ")
            sent = given.strip().encode("utf-8", "surrogateescape")
            if scheme.lower() != "bearer" or not hmac.compare_digest(sent, expected):
                raise Unauthorized(_why_refused(header))
        return await handler(request)

    return guard


def _why_refused(header: str) -> str:
    """Which part of the Authorization header is wrong; never echoes the token."""
    scheme, _, token = header.strip().partition(" ")
    if not header.strip():
        return "no Authorization header: send 'Authorization: Bearer <token>'"
    if scheme.lower() != "bearer":
        # Never echo it: a token sent without "Bearer " would be shown back.
        return "the Authorization header must be 'Bearer <token>' (the Bearer scheme)"
    if not token.strip():
        return (
            "the bearer token is empty: the shell variable holding it is probably unset "
            '(with make run: AUTH="Authorization: Bearer $(cat var/admin.token)")'
        )
    return "the bearer token is not the configured admin token"


def create_app(deps: Deps) -> web.Application:
    limit = deps.client.max_payload_bytes * 2 + BODY_OVERHEAD_BYTES
    app = web.Application(middlewares=[_errors, _guard(limit, deps.token)], client_max_size=limit)
    app[CLIENT] = deps.client
    app[METRICS] = deps.metrics
    app[ALERTS] = deps.alerts or Alerts(AlertsConfig())
    app[LIVENESS] = deps.liveness or Liveness()
    app[OPENAPI] = resources.files("dispatcher.admin").joinpath("openapi.json").read_bytes()
    operations.install(app)  # drives large DLQ replays and purges in the background
    panel.install(app)  # the operator panel's files, read once
    app.add_routes(
        [
            web.get("/healthz", probes.healthz, allow_head=False),
            web.get("/readyz", probes.readyz, allow_head=False),
            web.get("/metrics", probes.metrics, allow_head=False),
            web.get("/openapi.json", probes.openapi, allow_head=False),
            web.get("/ui", panel.redirect, allow_head=False),
            web.get("/ui/", panel.asset, allow_head=False),
            web.get("/ui/{name}", panel.asset, allow_head=False),
            web.post("/v1/webhooks", webhooks.create),
            web.get("/v1/webhooks", webhooks.list_, allow_head=False),
            web.get("/v1/webhooks/{id}", webhooks.get, allow_head=False),
            web.patch("/v1/webhooks/{id}", webhooks.patch),
            web.delete("/v1/webhooks/{id}", webhooks.delete),
            web.post("/v1/webhooks/{id}/rotate-secret", webhooks.rotate_secret),
            web.get("/v1/webhooks/{id}/stats", webhooks.stats, allow_head=False),
            web.get("/v1/webhooks/{id}/jobs", webhooks.jobs, allow_head=False),
            web.post("/v1/webhooks/{id}/test", webhooks.test),
            web.post("/v1/webhooks/{id}/deliveries", events.deliver),
            web.post("/v1/events", events.publish),
            web.get("/v1/jobs/{id}", jobs.get, allow_head=False),
            web.post("/v1/jobs/{id}/retry", jobs.retry),
            web.get("/v1/status", status.get, allow_head=False),
            web.get("/v1/stats", status.stats, allow_head=False),
            web.get("/v1/dlq", dlq.list_, allow_head=False),
            web.delete("/v1/dlq", dlq.purge),
            web.post("/v1/dlq/replay", dlq.replay),
            web.get("/v1/dlq/{id}", dlq.inspect, allow_head=False),
            web.get("/v1/operations/{id}", operations.get, allow_head=False),
            web.post("/v1/queues/{name}/pause", queues.pause),
            web.post("/v1/queues/{name}/resume", queues.resume),
            web.get("/v1/tasks", tasks.list_, allow_head=False),
            web.post("/v1/tasks/{name}/run", tasks.run),
        ]
    )
    return app


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:8080``) as config.py has checked it."""
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


async def serve(app: web.Application, listen: str) -> web.AppRunner:
    """Serve ``app`` on ``listen`` inside the running loop; ``runner.cleanup()`` stops it."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
