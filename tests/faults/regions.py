"""The fault suite's scenario with three regions: a redis-server and a ``dispatcher run`` per
region (a, b, c), the regions 40 ms apart each way (tests/regions_kit.py), one target for all.

The publisher is a Client of region a; webhooks belong to a, b or c; the accounting is the
suite's (`Scenario`), reading each job and DLQ entry in the region that holds it. Besides, a
`RegionScenario` compares the registry across regions and watches a's outbox toward one
region: its peak depth, the age of its oldest entry (the relay's lag), and when it drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, cast

from dispatcher.ids import region_of
from dispatcher.queue.status import live_workers
from tests.faults.harness import Scenario
from tests.helpers import Daemon, eventually, stop_daemons
from tests.regions_kit import NAMES, Regions3, admin_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from dispatcher import Client
    from dispatcher.queue.store import Store

PREFIX = "faults"


@dataclass
class OutboxWatch:
    """What a's outbox toward one region did while watched."""

    peak: int = 0  # most entries at once
    max_lag_ms: int = 0  # the oldest entry's age at its oldest
    drained_at: float | None = None  # time.monotonic() it first held nothing older than `since`
    since_ms: int | None = None  # wall-clock ms from which `drained_at` is looked for


class RegionScenario(Scenario):
    """A `Scenario` over three regions; ``endpoint(..., region="b")`` puts a webhook in b."""

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        healthy: int = 6,
        settings: dict[str, str] | None = None,
        seed: int = 1,
    ) -> None:
        super().__init__(
            name, directory, daemons=0, healthy=healthy, settings=settings, seed=seed, metrics=True
        )
        self.kit = Regions3(directory, prefix=PREFIX)
        self.redis = self.kit.servers["a"]
        #: A Client per region on its own Redis (the others through links of their own), for
        #: the accounting and for changes made in that region.
        self.views: dict[str, Client] = {}
        self.daemon_regions: dict[int, str] = {}  # id(daemon) -> its region

    async def __aenter__(self) -> Self:
        self.kit.start()
        try:
            await self.target.__aenter__()
            self.client = self.kit.client_in("a")
            self.views = {r: self.kit.client_in(r, via=f"{r}-views") for r in NAMES}
            for region, view in self.views.items():  # as each region's daemon does at start
                await view.store.adopt_region(region, NAMES)
            for i, path in enumerate(self.healthy):
                await self.endpoint(path, region=NAMES[i % len(NAMES)])
            for region in NAMES:
                self.start_daemon(region)
            await self.ready()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stops whatever `__aenter__` got to start."""
        await stop_daemons(*self.daemons)
        for client in [getattr(self, "client", None), *self.views.values()]:
            if client is not None:
                await client.close()
        await self.target.__aexit__(None, None, None)
        self.kit.stop()

    @property
    def url(self) -> str:
        return self.kit.url("a")

    def start_daemon(self, region: str = "a", **settings: str) -> Daemon:
        """One more ``dispatcher run`` in ``region``, serving /metrics."""
        self._started += 1
        env = self.kit.env_for(region, self.settings | settings, metrics=True) | self.extra_env
        daemon = Daemon(env, self.directory / f"daemon-{region}-{self._started}.log").start()
        self.admin_ports[id(daemon)] = admin_port(env)
        self.daemon_regions[id(daemon)] = region
        self.daemons.append(daemon)
        return daemon

    async def ready(self, timeout_s: float = 20.0) -> None:
        """Every running daemon has signed in to its own region's Redis."""
        for region, view in self.views.items():
            running = sum(
                1
                for d in self.daemons
                if self.daemon_regions[id(d)] == region and d.process and d.process.poll() is None
            )

            async def signed_in(store: Store = view.store, n: int = running) -> bool:
                return len(await live_workers(store)) >= n

            await eventually(signed_in, timeout_s=timeout_s, what=f"{region}'s daemons ready")

    # --- the accounting, per region --------------------------------------------------------------

    def client_of(self, job_id: str) -> Client:
        """Each job is read in its own region's Redis, directly."""
        return self.views[region_of(job_id) or "a"]

    def dlq_stores(self) -> list[Store]:
        return [view.store for view in self.views.values()]

    # --- the registry and the outboxes -----------------------------------------------------------

    async def webhook_id(self, path: str) -> str:
        """The id of the webhook at ``path`` (in its own tenant), as region a lists it."""
        tenant = next(t for t, p in self.tenants.items() if p == path)
        [hook] = (await self.client.list_webhooks(tenant))["items"]
        return hook["id"]

    async def registries(self) -> dict[str, tuple[dict[bytes, bytes], dict[bytes, bytes]]]:
        """Each region's webhook records and versions, as stored."""
        found = {}
        for region, view in self.views.items():
            redis, keys = view.store.redis, view.store.keys
            records = await cast("Any", redis.hgetall(keys.webhooks))
            versions = await cast("Any", redis.hgetall(keys.versions))
            found[region] = (records, versions)
        return found

    async def registry_converged(self, timeout_s: float = 15.0) -> float:
        """Wait until every region holds the same records and versions; the seconds it took."""
        start = time.monotonic()

        async def same() -> bool:
            with contextlib.suppress(Exception):  # a region's Redis may still be loading
                found = list((await self.registries()).values())
                return all(f == found[0] for f in found[1:])
            return False

        await eventually(same, timeout_s=timeout_s, interval_s=0.1, what="registries equal")
        return round(time.monotonic() - start, 2)

    @contextlib.asynccontextmanager
    async def watching_outbox(
        self, dest: str, *, every_s: float = 0.2
    ) -> AsyncIterator[OutboxWatch]:
        """Sample a's outbox toward ``dest`` while the block runs."""
        watch = OutboxWatch()
        store = self.views["a"].store
        key = store.keys.outbox(dest)
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                depth = int(await cast("Any", store.redis.xlen(key)))
                first = await cast("Any", store.redis.xrange(key, count=1))
                now_ms = int(time.time() * 1000)
                oldest_ms = int(first[0][0].split(b"-")[0]) if first else now_ms
                watch.peak = max(watch.peak, depth)
                watch.max_lag_ms = max(watch.max_lag_ms, now_ms - oldest_ms)
                since = watch.since_ms
                if since is not None and watch.drained_at is None and oldest_ms >= since:
                    watch.drained_at = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every_s)

        task = asyncio.create_task(sample())
        try:
            yield watch
        finally:
            stop.set()
            await task

    async def outboxes_empty(self, timeout_s: float = 15.0) -> None:
        """Wait until no region's outbox toward any other holds an entry."""

        async def empty() -> bool:
            for region, view in self.views.items():
                for dest in NAMES:
                    if dest != region and await cast(
                        "Any", view.store.redis.xlen(view.store.keys.outbox(dest))
                    ):
                        return False
            return True

        await eventually(empty, timeout_s=timeout_s, interval_s=0.1, what="every outbox empty")
