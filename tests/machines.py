"""The frame the stateful model tests share: a Hypothesis state machine whose rules are plain
functions driving a real Redis through a ``Client`` of its own key prefix, in an event loop of
its own, cleaned up after each example."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from dispatcher import Client
from dispatcher.queue.store import Store

if TYPE_CHECKING:
    from collections.abc import Awaitable


class ClientMachine(RuleBasedStateMachine):
    """Set ``redis_url`` on the subclass before running it; ``open_client`` in an initialize
    rule; ``run`` awaits a coroutine from a rule."""

    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.prefix = f"m{uuid.uuid4().hex[:12]}"
        self.client: Client | None = None

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def open_client(self) -> Client:
        self.client = Client(Store.open(self.redis_url, prefix=self.prefix))
        return self.client

    def teardown(self) -> None:
        try:
            if self.client is not None:
                self.run(self._clean())
        finally:
            self.loop.close()

    async def _clean(self) -> None:
        assert self.client is not None
        redis = self.client.store.redis
        keys = [k async for k in redis.scan_iter(f"{self.prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await self.client.close()


def run_machine(machine: type[ClientMachine], redis_url: str, *, examples: int, steps: int) -> None:
    """Run ``machine`` seeded (the same examples every run, none remembered between runs)."""
    machine.redis_url = redis_url
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
