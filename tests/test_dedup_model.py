"""A stateful model of hash-based deduplication: publishes with and without a window, one by
one, together (the Publisher's one pipeline) and in publish_many, on three shards, with windows
ending (every shard's dedup key gone, or shard 0's alone, as when it expires first), checked
against a dict of the events each identity was last accepted as."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    rule,
)

from dispatcher.queue.keys import Keys, stream_of
from tests.machines import ClientMachine, run_machine

SHARDS = 3
TENANTS = ("t", "u:1")  # a ':' in a tenant id: the key says where it ends
TYPES = ("x", "y")
# Pairs of payloads that are one JSON value written two ways, and ones that are not.
PAYLOADS: tuple[Any, ...] = (
    {"a": 1, "b": [1, 2]},
    {"b": [1, 2], "a": 1},
    {"a": 1.0, "b": [1, 2]},
    {},
    [],
)
WINDOWS = (0, 60)

_event = st.tuples(
    st.sampled_from(TENANTS),
    st.sampled_from(TYPES),
    st.sampled_from(range(len(PAYLOADS))),
    st.sampled_from(WINDOWS),
)


def _identity(tenant: str, event_type: str, payload: int) -> tuple[str, str, bytes]:
    return tenant, event_type, orjson.dumps(PAYLOADS[payload], option=orjson.OPT_SORT_KEYS)


class DedupMachine(ClientMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hooks: dict[str, int] = {}
        #: identity -> the answer of the event it was last accepted as, while its window runs
        self.live: dict[tuple[str, str, bytes], dict[str, Any]] = {}
        self.jobs = 0  # jobs the model expects enqueued

    @initialize()
    def set_up(self) -> None:
        self.run(self._set_up())

    async def _set_up(self) -> None:
        client = self.open_client()
        await client.store.adopt_layout(SHARDS)
        for n, tenant in enumerate(TENANTS):
            for _ in range(2 + n):
                await client.create_webhook(tenant, "https://hooks.example.com/in")
            self.hooks[tenant] = 2 + n

    def _expect(self, events: list[tuple[str, str, int, int]], answers: list[Any]) -> None:
        """The answers of ``events``, sent in this order, against the model."""
        assert len(answers) == len(events)
        for (tenant, event_type, payload, window), answer in zip(events, answers, strict=True):
            assert isinstance(answer, dict), answer
            identity = _identity(tenant, event_type, payload)
            first = self.live.get(identity)
            if window and first is not None:
                assert answer == {**first, "deduplicated": True}
                continue
            assert answer["deduplicated"] is False
            assert answer["matched"] == self.hooks[tenant]
            assert all(answer["event_id"] != a["event_id"] for a in self.live.values())
            self.jobs += answer["matched"]
            if window:
                self.live[identity] = answer

    @rule(events=st.lists(_event, min_size=1, max_size=6), many=st.booleans())
    def publish_together(self, events: list[tuple[str, str, int, int]], many: bool) -> None:
        """Several events at once: in one publish_many, or as single publishes that the
        Publisher sends in one pipeline (in the order they were asked for)."""
        assert self.client is not None
        client = self.client
        if many:
            answers = self.run(
                client.publish_many(
                    [
                        {
                            "tenant_id": t,
                            "event_type": e,
                            "payload": PAYLOADS[p],
                            "dedup_window_s": w,
                        }
                        for t, e, p, w in events
                    ]
                )
            )
        else:

            async def together() -> list[Any]:
                return await asyncio.gather(
                    *(client.publish(t, e, PAYLOADS[p], dedup_window_s=w) for t, e, p, w in events)
                )

            answers = self.run(together())
        self._expect(events, [dict(a) if isinstance(a, dict) else a for a in answers])

    @rule(event=_event)
    def publish_one(self, event: tuple[str, str, int, int]) -> None:
        assert self.client is not None
        tenant, event_type, payload, window = event
        answer = self.run(
            self.client.publish(tenant, event_type, PAYLOADS[payload], dedup_window_s=window)
        )
        self._expect([event], [dict(answer)])

    @rule(tenant=st.sampled_from(TENANTS), everywhere=st.booleans())
    def window_ends(self, tenant: str, everywhere: bool) -> None:
        """The tenant's windows end: every shard's dedup keys expire, or shard 0's alone (it
        is written first, so it expires first)."""
        assert self.client is not None
        redis = self.client.store.redis

        async def expire() -> None:
            for shard in range(SHARDS if everywhere else 1):
                pattern = Keys(self.prefix, shard).dedup(tenant, "*")
                keys = [k async for k in redis.scan_iter(pattern, count=1000)]
                if keys:
                    await redis.delete(*keys)

        self.run(expire())
        self.live = {k: v for k, v in self.live.items() if k[0] != tenant}

    @invariant()
    def enqueued_once(self) -> None:
        """Every accepted event's jobs, each once, are in the ready streams."""
        if self.client is None:
            return
        redis = self.client.store.redis
        stream = stream_of("default", "normal")

        async def queued() -> int:
            return sum(
                [int(await redis.xlen(Keys(self.prefix, k).ready(stream))) for k in range(SHARDS)]
            )

        assert self.run(queued()) == self.jobs


def test_dedup_matches_its_model(redis_url: str) -> None:
    """Whatever the sequence of publishes, windows and window ends on three shards, each
    identity is enqueued once per window, its duplicates answer its answer, and every other
    publish is a new event with all its jobs."""
    run_machine(DedupMachine, redis_url, examples=40, steps=12)
