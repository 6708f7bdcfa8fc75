"""A real HTTP target for ordered delivery: it reads each request's ``{"seq", "key"}`` body
and records, per lane (``key``), the order of arrivals, their answers and the most requests
of one lane it was answering at once."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Self

import orjson
from aiohttp import web


class LaneTarget:
    """``async with LaneTarget(fail_rate=0.2) as target:`` then deliver to ``target.url``.

    A request fails (500) when its lane is in ``failing`` or at random with ``fail_rate``;
    otherwise it answers 200. ``arrivals[key]`` lists ``(seq, status)`` in arrival order.
    The first request of a seq in ``delays`` takes that many seconds to answer.
    """

    def __init__(self, *, fail_rate: float = 0.0, seed: int = 19) -> None:
        self.fail_rate = fail_rate
        self.failing: set[str | None] = set()
        self.delays: dict[int, float] = {}
        self.arrivals: defaultdict[str | None, list[tuple[int, int]]] = defaultdict(list)
        self.active: defaultdict[str | None, int] = defaultdict(int)
        self.peak: defaultdict[str | None, int] = defaultdict(int)
        self.url = ""
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        key = body.get("key")
        self.active[key] += 1
        self.peak[key] = max(self.peak[key], self.active[key])
        try:
            # another request of the lane would overlap here
            await asyncio.sleep(self.delays.pop(int(body["seq"]), 0))
            failed = key in self.failing or self._random.random() < self.fail_rate
            status = 500 if failed else 200
            self.arrivals[key].append((int(body["seq"]), status))
            return web.Response(status=status, text="ok")
        finally:
            self.active[key] -= 1

    def delivered_order(self, key: str | None) -> list[int]:
        """The lane's seqs in the order of their first successful arrival."""
        seen: dict[int, None] = {}
        for seq, status in self.arrivals[key]:
            if status == 200:
                seen.setdefault(seq, None)
        return list(seen)
