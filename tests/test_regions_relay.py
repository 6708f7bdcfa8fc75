"""The relay (issue 22): region A's outbox entries become jobs in region B's queues, written as
B's own publish writes them, at least once and never twice, in order, across B's outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from dispatcher import Client
from dispatcher.ids import new_event_ids, new_webhook_id
from dispatcher.metrics import Metrics
from dispatcher.queue import outbox
from dispatcher.queue.keys import RELAY_GROUP
from dispatcher.queue.records import get_job
from dispatcher.queue.regions import Regions
from dispatcher.queue.store import Store
from dispatcher.relay import Relay
from tests.conftest import WorkerHarness
from tests.helpers import RedisServer, eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from tests.target import Target

pytestmark = pytest.mark.xdist_group("regions")

NAMES = ("a", "b")


class Servers:
    def __init__(self, root: Path) -> None:
        self.a = RedisServer(root / "a")
        self.b = RedisServer(root / "b", appendonly=True)  # restarted by a test: keeps its data


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Region a's and region b's Redis, for the whole module."""
    found = Servers(tmp_path_factory.mktemp("relay"))
    found.a.start()
    found.b.start()
    try:
        yield found
    finally:
        found.a.stop()
        found.b.stop()


class Pair:
    """Region a (its store, its Regions, the Redis behind) and region b (a Client on it)."""

    def __init__(self, servers: Servers, prefix: str) -> None:
        self.servers, self.prefix = servers, prefix
        self.a = Store.open(servers.a.url, prefix=prefix)
        self.b = Client.from_url(servers.b.url, prefix)
        self.regions = Regions(self.a, "a", {"a": servers.a.url, "b": servers.b.url})
        self.metrics = Metrics()

    async def start(self) -> None:
        await self.a.adopt_region("a", NAMES)
        await self.b.store.adopt_region("b", NAMES)

    async def close(self) -> None:
        await self.regions.close()
        for url, store in ((self.servers.a.url, self.a), (self.servers.b.url, self.b.store)):
            conn = aioredis.Redis.from_url(url)
            keys = [k async for k in conn.scan_iter(f"{self.prefix}:*", count=1000)]
            if keys:
                await conn.delete(*keys)
            await conn.aclose()
            await store.close()

    async def hook(self, target_url: str = "http://127.0.0.1:9/hook", **fields: Any) -> str:
        """A webhook of tenant acme in region b."""
        created = await self.b.create_webhook("acme", target_url, ["order.paid"], **fields)
        return created["id"]

    async def put(self, fields: dict[bytes, bytes]) -> str:
        """An outbox entry in region a for region b (publish.lua's part, written directly)."""
        sid = await self.a.redis.xadd(self.a.keys.outbox("b"), fields)  # type: ignore[arg-type]
        return sid.decode()

    async def outbox_len(self) -> int:
        return int(await self.a.redis.xlen(self.a.keys.outbox("b")))

    async def drained(self) -> bool:
        """Whether a's outbox to b is empty (every entry acked and deleted)."""
        return await self.outbox_len() == 0

    async def ready(self, stream: str = "default") -> list[str]:
        """The job ids in b's ready stream, in order."""
        entries = await self.b.store.redis.xrange(self.b.store.keys.ready(stream))
        return [fields[b"j"].decode() for _, fields in entries]

    async def run_relay(self, consumer: str = "relay-1") -> Running:
        stop = asyncio.Event()
        relay = Relay(self.regions, self.metrics, consumer=consumer)
        return Running(relay, stop, asyncio.create_task(relay.run(stop)))


class Running:
    def __init__(self, relay: Relay, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.relay, self.stop, self.task = relay, stop, task

    async def end(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=10)


@pytest.fixture
async def pair(servers: Servers) -> AsyncIterator[Pair]:
    found = Pair(servers, f"t{uuid.uuid4().hex[:12]}")
    await found.start()
    yield found
    await found.close()


def job_id(n: int = 1) -> str:
    return f"{new_event_ids()[1]}{n}~b"


def entry(
    job: str,
    webhook_id: str,
    *,
    payload: bytes = b'{"order": 1}',
    due_ms: int = 0,
    stream: str = "default",
    ordering: str | None = None,
) -> dict[bytes, bytes]:
    """An outbox entry as the contract fixes it (keys.py ``outbox``)."""
    fields = {
        b"j": job.encode(),
        b"w": webhook_id.encode(),
        b"t": b"acme",
        b"e": b"order.paid",
        b"q": stream.encode(),
        b"c": str(int(time.time() * 1000)).encode(),
        b"n": str(due_ms).encode(),
        b"p": payload,
    }
    if ordering is not None:
        fields[b"o"] = ordering.encode()
    return fields


def entries(*fields: dict[bytes, bytes]) -> list[outbox.Entry]:
    return [outbox.Entry(f"{i + 1}-0", f) for i, f in enumerate(fields)]


_TIMES = ("id", "event_id", "created_at", "processed_at", "next_attempt_at", "finished_at")


async def view(pair: Pair, job: str) -> dict[str, Any]:
    found = await get_job(pair.b.store, job)
    assert found is not None, job
    return {k: v for k, v in found.to_wire().items() if k not in _TIMES}


async def test_a_relayed_job_is_the_job_a_local_publish_makes(pair: Pair) -> None:
    """A job relayed to b reads in b as the one b's own publish makes: ready, scheduled, FIFO."""
    plain = await pair.hook()
    fifo = await pair.hook(ordering="fifo")
    later = int(time.time() * 1000) + 3_600_000
    deliver_at = datetime.fromtimestamp(later / 1000, UTC)
    local = [
        await pair.b.publish("acme", "order.paid", {"order": 1}),
        await pair.b.publish("acme", "order.paid", {"order": 1}, deliver_at=deliver_at),
        await pair.b.publish("acme", "order.paid", {"order": 1}, ordering_key="k1"),
    ]
    relayed = [job_id(1), job_id(1), job_id(1)]
    batch = [
        entry(relayed[0], plain),
        entry(relayed[1], plain, due_ms=later),
        entry(relayed[2], fifo, ordering="=k2"),
    ]
    for fields in batch:
        await pair.put(fields)
    running = await pair.run_relay()
    await eventually(pair.drained, what="the outbox relayed")
    await running.end()
    for answer, job, webhook_id in zip(local, relayed, (plain, plain, fifo), strict=True):
        mine = next(j["id"] for j in answer["jobs"] if j["webhook_id"] == webhook_id)
        assert await view(pair, job) == await view(pair, mine)
    assert pair.metrics.get("dispatcher_relay_sent_total", region="b") == 3
