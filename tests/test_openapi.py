"""The OpenAPI document is true to the app: the same routes, and under fuzzing no 5xx and no
answer that the document does not describe (status, content type, body schema)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from dispatcher import Client
from dispatcher.admin.app import Deps, create_app, serve
from dispatcher.metrics import Metrics
from tests.admin_api import TOKEN
from tests.spec_check import SPEC, check_answer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiohttp import web

FUZZ_EXAMPLES = 30  # per operation: about 600 requests, a few seconds
schema = schemathesis.openapi.from_dict(SPEC)


def _router_routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def test_spec_and_router_list_the_same_routes() -> None:
    """Every route of the app is in openapi.json with the same methods, and nothing else is."""
    app = create_app(Deps(Client.from_url("redis://127.0.0.1:1/0"), Metrics(), TOKEN))
    documented = {
        (method.upper(), path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert documented == _router_routes(app)
    assert SPEC["openapi"].startswith("3.1")


class _LiveApi:
    """The admin app served from a thread of its own, for schemathesis's synchronous calls."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.base_url = ""

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout=10)

    async def _open(self) -> None:
        self.client = Client.from_url(self.redis_url, prefix=self.prefix, max_payload_bytes=4096)
        self.runner = await serve(create_app(Deps(self.client, Metrics(), TOKEN)), "127.0.0.1:0")
        host, port = next(iter(self.runner.addresses))[:2]
        self.base_url = f"http://{host}:{port}"

    async def _close(self) -> None:
        await self.runner.cleanup()
        await self.client.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def live_api(redis_url: str) -> Iterator[_LiveApi]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    live = _LiveApi(redis_url, prefix)
    live.start()
    yield live
    live.stop()
    conn = redis.Redis.from_url(redis_url)
    keys = list(conn.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        conn.delete(*keys)
    conn.close()


@schema.parametrize()
@seed(16)  # the same requests every run: a failure repeats, and the run time holds
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests_get_documented_answers(
    case: schemathesis.Case[Any], live_api: _LiveApi
) -> None:
    """Requests generated from the spec (valid and invalid) never answer 5xx, and each answer
    has a status, content type and body that the spec documents for the operation; the body
    is also checked closed (no property the spec does not list), as ``tests.spec_check``."""
    response = case.call_and_validate(
        base_url=live_api.base_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    content_type = next(
        (v[0] for k, v in response.headers.items() if k.lower() == "content-type"), ""
    )
    body = response.json() if content_type.startswith("application/json") else None
    check_answer(
        case.method,
        urlsplit(response.request.url or "").path,
        response.status_code,
        content_type.split(";")[0].strip(),
        response.text,
        body,
    )
