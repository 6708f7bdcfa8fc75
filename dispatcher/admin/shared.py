"""What the admin app and its handlers share: the app keys and the JSON answers.

``app.py`` fills the keys in ``create_app``; a handler reads them (``request.app[CLIENT]``)
and answers with ``json_response`` or ``error_response``. Importing this module never
imports a handler, so handlers and ``app.py`` import it without a cycle.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from dispatcher.alerts import Alerts
from dispatcher.client import Client
from dispatcher.liveness import Liveness
from dispatcher.metrics import Metrics

CLIENT: Final = web.AppKey("client", Client)
METRICS: Final = web.AppKey("metrics", Metrics)
OPENAPI: Final = web.AppKey("openapi", bytes)
ALERTS: Final = web.AppKey("alerts", Alerts)
LIVENESS: Final = web.AppKey("liveness", Liveness)


def json_response(data: Any, status: int = 200) -> web.Response:
    """JSON with orjson, which also writes a job's stored payload bytes as they are."""
    # The newline keeps a shell prompt off the end of the answer (curl -s prints it as is).
    return web.Response(
        body=orjson.dumps(data) + b"\n", status=status, content_type="application/json"
    )


def error_response(
    status: int, code: str, message: str, extra: dict[str, object] | None = None
) -> web.Response:
    """``{"error": {code, message}}`` plus ``extra`` fields, the shape of every failure."""
    return json_response({"error": {"code": code, "message": message}, **(extra or {})}, status)
