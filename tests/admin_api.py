"""The admin API served for tests: the real app on 127.0.0.1 and a small HTTP caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from dispatcher.admin.app import Deps, create_app, serve
from dispatcher.metrics import Metrics
from tests.spec_check import check_answer

if TYPE_CHECKING:
    from aiohttp import web

    from dispatcher import Client

TOKEN = "test-token-0123456789"  # noqa: S105 - a test token


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    text: str


@dataclass
class Api:
    """Calls one served app; ``token=None`` sends no Authorization header.

    Every answer is checked against openapi.json (``tests.spec_check.check_answer``).
    """

    session: aiohttp.ClientSession
    base: str
    token: str | None = TOKEN
    runners: list[web.AppRunner] = field(default_factory=list)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
        token: str | bool | None = True,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        bearer = self.token if token is True else token
        if isinstance(bearer, str):
            sent["Authorization"] = f"Bearer {bearer}"
        body = data if data is not None else (orjson.dumps(json) if json is not None else None)
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base + path, data=body, params=params, headers=sent
        ) as response:
            text = await response.text()
            parsed = None
            if response.content_type == "application/json" and text:
                parsed = orjson.loads(text)
            check_answer(method, path, response.status, response.content_type, text, parsed)
            return Answer(response.status, parsed, dict(response.headers), text)

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        await self.session.close()


async def start_api(
    client: Client, *, token: str | None = TOKEN, metrics: Metrics | None = None
) -> tuple[web.Application, Api]:
    app = create_app(Deps(client, metrics or Metrics(), token))
    runner = await serve(app, "127.0.0.1:0")
    host, port = next(iter(runner.addresses))[:2]
    api = Api(aiohttp.ClientSession(), f"http://{host}:{port}", token or TOKEN, [runner])
    return app, api
