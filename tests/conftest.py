"""Fixtures: a real redis-server per session, a prefix per test, a real HTTP target."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from dispatcher import Client, config
from dispatcher.config import DeliveryConfig, JobsConfig
from dispatcher.delivery import Worker
from dispatcher.metrics import Metrics
from dispatcher.oauth import AuthorizingSender
from dispatcher.queue import streams
from dispatcher.queue.store import Store
from dispatcher.sender import Sender
from dispatcher.sender_aiohttp import AiohttpSender
from dispatcher.ssrf import AddressPolicy
from tests.admin_api import start_api
from tests.helpers import ClusterServers, RedisServer
from tests.target import Target

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from dispatcher.oauth import TokenCache
    from dispatcher.sender import HttpSender
    from tests.admin_api import Api
    from tests.helpers import MakeSender

#: The fault suite's table, printed at the end (by an xdist controller too).
pytest_plugins = ["tests.faults.summary"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """REDIS_URL when set, else a redis-server started for this session on a free port."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    conn = aioredis.Redis.from_url(redis_url)
    yield conn
    keys = [k async for k in conn.scan_iter(f"{prefix}:*", count=1000)]
    if keys:
        await conn.delete(*keys)
    await conn.aclose()


@pytest.fixture
async def store(redis_url: str, prefix: str, redis: aioredis.Redis) -> AsyncIterator[Store]:
    """The queue layer's handle on this test's prefix, with the default queue's group made."""
    s = Store.open(redis_url, prefix=prefix)
    await streams.ensure_group(s, "default")
    yield s
    await s.close()


@pytest.fixture
async def client(redis_url: str, prefix: str, redis: aioredis.Redis) -> AsyncIterator[Client]:
    async with Client.from_url(redis_url, prefix=prefix) as c:
        yield c


@pytest.fixture
async def api(client: Client) -> AsyncIterator[Api]:
    """The admin API served from this test's Client (a test file may shadow it with its own)."""
    _app, served = await start_api(client)
    yield served
    await served.close()


HTTP_CLIENTS: dict[str, MakeSender] = {"native": Sender, "aiohttp": AiohttpSender}


@pytest.fixture(params=config.HTTP_CLIENTS)  # every value delivery.http_client accepts
def make_sender(request: pytest.FixtureRequest) -> MakeSender:
    """The sender class under test: a test using this runs once with each HTTP client."""
    return HTTP_CLIENTS[request.param]


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async with Target() as t:
        yield t


class WorkerHarness:
    """An in-process worker with small timeouts, started and stopped by the test."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.metrics = Metrics()
        self.workers: list[tuple[Worker, asyncio.Task[None], Store, HttpSender]] = []

    async def start(
        self,
        *,
        allow_private: bool = True,
        timeout_s: float = 2.0,
        stall_timeout_s: float = 3.0,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 1.0,
        max_attempts: int = 3,
        concurrency: int = 32,
        queues: tuple[str, ...] = ("default",),
        breaker_open_s: float = 30.0,
        disable_after_s: float = 432_000.0,
        shards: int | None = None,
        payload_retention_s: float | None = None,
        proxy_url: str | None = None,
        sender_class: MakeSender = Sender,
        tokens: TokenCache | None = None,
    ) -> Worker:
        """Start a worker with small timeouts, so failures and retries fit in a test's deadline
        (``sender_class``: the HTTP client, ``proxy_url``: its egress proxy; ``tokens``: its
        sender wrapped for OAuth2 as the daemon's, with that token cache)."""
        cfg = DeliveryConfig(
            timeout_s=timeout_s,
            stall_timeout_s=stall_timeout_s,
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
            max_attempts=max_attempts,
            concurrency=concurrency,
            queues=queues,
            breaker_open_s=breaker_open_s,
            disable_after_s=disable_after_s,
        )
        store = Store.open(self.redis_url, prefix=self.prefix)
        if shards is not None:  # as `dispatcher run` records redis.shards
            await store.adopt_layout(shards)
        sender: HttpSender = sender_class(
            timeout_s=cfg.timeout_s,
            concurrency=cfg.concurrency,
            policy=AddressPolicy(allow_private=allow_private, allowed_cidrs=()),
            user_agent="dispatcher/test",
            proxy_url=proxy_url,
        )
        if tokens is not None:
            sender = AuthorizingSender(
                sender, tokens, timeout_s=cfg.timeout_s, metrics=self.metrics
            )
        await sender.start()
        jobs = (
            JobsConfig()
            if payload_retention_s is None
            else JobsConfig(payload_retention_s=payload_retention_s)
        )
        worker = Worker(store, sender, cfg, jobs, self.metrics, queues=queues)
        task = asyncio.create_task(worker.run(drain_grace_s=cfg.timeout_s + 1))
        self.workers.append((worker, task, store, sender))
        return worker

    async def stop(self) -> None:
        """Stop every worker, as SIGTERM does: they drain what they hold and sign off."""
        for worker, *_ in self.workers:
            worker.stop.set()
        tasks = [task for _, task, _, _ in self.workers]
        unblocking = asyncio.create_task(_unblock_reads(self.redis_url, tasks))
        try:
            for _, task, store, sender in self.workers:
                await asyncio.wait_for(task, timeout=30)
                await sender.close()
                await store.close()
        finally:
            unblocking.cancel()
            await asyncio.gather(unblocking, return_exceptions=True)
        self.workers.clear()


async def _unblock_reads(redis_url: str, tasks: list[asyncio.Task[None]]) -> None:
    """Until ``tasks`` end: end the blocking XREADGROUPs waiting on the server as if their
    BLOCK time had run out (CLIENT UNBLOCK), so stopped workers need not wait it out (0.5 s)."""
    conn = aioredis.Redis.from_url(redis_url)
    try:
        while not all(task.done() for task in tasks):
            for client in await conn.client_list():
                if "b" in client.get("flags", "") and client.get("cmd") == "xreadgroup":
                    await conn.client_unblock(int(client["id"]))
            await asyncio.sleep(0.02)
    except aioredis.RedisError:
        return  # a server gone or a cluster URL: the reads end on their own
    finally:
        await conn.aclose()


@pytest.fixture
async def workers(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> AsyncIterator[WorkerHarness]:
    harness = WorkerHarness(redis_url, prefix)
    yield harness
    await harness.stop()


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    """A three-primary Redis Cluster on loopback, for the tests of one module."""
    servers = ClusterServers(tmp_path_factory.mktemp("cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
