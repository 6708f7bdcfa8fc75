"""The registry replicator: brings every other region's webhook writes into this region's
Redis, so a publish here routes from its own copy of every webhook (docs/regions.md).

For each other region S and each shard k, one process of this region at a time (a lease,
``registry:lock:S``) reads S's ``registry`` stream from its cursor (``registry:from:S``) and
applies what it reads (``queue/registry.py``: last writer wins by version, the cursor moved in
the same script). Without a cursor (regions just switched on, a new region) or when S trimmed
entries not yet applied here (a region cut off longer than the stream keeps them), it
resyncs: notes S's last entry, applies all S's records and tombstones, then reads on from
the note. A region that cannot be reached is waited for (``loops``: logged once, backed off)
without stopping the others. Records travel sealed: every region must share
``security.encryption_keys``; a region whose keys do not open ours is not applied
(``registry.key_mismatch``). Each process also trims its own region's stream by age.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog

from dispatcher import loops
from dispatcher.queue import encryption, registry

if TYPE_CHECKING:
    from dispatcher.metrics import Metrics
    from dispatcher.queue.regions import Regions
    from dispatcher.queue.store import Store

log = structlog.get_logger()

#: The lease on replicating one region into one shard (renewed each round).
LEASE_TTL_MS = 10_000
#: How long a read waits on a region's stream for a new entry.
BLOCK_MS = 1000
#: How long a region's registry stream keeps its entries (a region cut off longer resyncs).
MAX_AGE_MS = 7 * 24 * 3600 * 1000
#: How often this process trims its own region's registry streams.
TRIM_EVERY_S = 600.0
#: How often the other region's encryption canary is checked against our keys.
KEYS_CHECK_EVERY_S = 60.0
#: How often each shard's own stream is checked against another region's cursor on it.
LOST_CHECK_EVERY_S = 60.0
#: The pause after a round with nothing to do that could not wait on a stream.
IDLE_S = 1.0


class Replicator:
    def __init__(self, regions: Regions, metrics: Metrics, *, consumer: str) -> None:
        self.regions, self.metrics, self.consumer = regions, metrics, consumer
        self.token = consumer  # unique per process (the worker's consumer name)
        self._held: set[tuple[str, int]] = set()  # (source, shard) leases held
        self.block_ms = BLOCK_MS
        self._keys_checked: dict[str, float] = {}
        self._refused: set[str] = set()
        self._lost_checked: dict[tuple[str, int], float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set."""
        if not self.regions.enabled:
            await stop.wait()
            return
        # its own writes go on its registry streams even with no other region yet: trimmed
        tasks = [asyncio.create_task(self._follow(s, stop)) for s in self.regions.others]
        tasks.append(asyncio.create_task(self._trim(stop)))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drop_leases()

    async def _drop_leases(self) -> None:
        """So another process of this region takes over at once (best effort: else the leases
        expire)."""
        held, self._held = self._held, set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                for source, k in held:
                    await registry.drop_lease(self.regions.home.shard(k), source, self.token)

    async def _follow(self, source: str, stop: asyncio.Event) -> None:
        outage = loops.Outage(f"registry.{source}", self.metrics)
        while not stop.is_set():
            busy = await loops.attempt(lambda: self._round(source), outage, stop)
            if busy is False:
                await loops.sleep_until_stop(stop, IDLE_S)

    async def _round(self, source: str) -> bool:
        """One pass over ``source``'s shards; False when it could not wait for work (another
        process holds the leases, or the keys differ)."""
        there_home = await self.regions.checked(source)
        if not await self._keys_match(source, there_home):
            return False
        served = (await there_home.read_layout()).served
        here_home = self.regions.home
        held = busy = False
        for k in range(served):
            here, there = here_home.shard(k), there_home.shard(k)
            if not await registry.hold_lease(here, source, self.token, LEASE_TTL_MS):
                self._held.discard((source, k))
                continue
            self._held.add((source, k))
            held = True
            cursor = await registry.cursor_of(here, source)
            if cursor is None or await registry.missed(there, cursor):
                await self._resync(source, here, there)
                busy = True
                continue
            if await self._lost_here(source, here, there):
                busy = True
                continue
            # wait on the last shard only, once the others had nothing
            block = self.block_ms if k == served - 1 and not busy else None
            entries = await registry.read(there, cursor, block_ms=block)
            if entries:
                writes = [write for _id, write in entries]
                self._count(
                    source, await registry.apply(here, source, writes, cursor=entries[-1][0])
                )
            busy = busy or bool(entries) or block is not None
        return held and busy

    async def _lost_here(self, source: str, here: Store, there: Store) -> bool:
        """Checked once a minute: ``source`` applied writes of this shard that this Redis no
        longer has (a failover lost them); then resync from ``source``, which has them, and
        move this shard's stream past ``source``'s cursor, so its next writes reach it."""
        key = source, here.keys.shard
        if time.monotonic() - self._lost_checked.get(key, float("-inf")) < LOST_CHECK_EVERY_S:
            return False
        home = self.regions.name
        assert home is not None  # noqa: S101 - run() follows others only with regions
        lost = await registry.lost_here(here, there, home)
        if lost is not None:
            log.warning("registry.writes_lost_here", region=source, shard=key[1], cursor=lost)
            await self._resync(source, here, there)
            await registry.go_on_after(here, lost)
        self._lost_checked[key] = time.monotonic()
        return lost is not None

    async def _resync(self, source: str, here: Store, there: Store) -> None:
        log.info("registry.resync", region=source, shard=here.keys.shard)
        noted = await registry.last_id(there)
        cursor = 0
        while True:
            cursor, writes = await registry.scan(there, cursor)
            if writes:
                self._count(source, await registry.apply(here, source, writes, cursor=None))
            if cursor == 0:
                break
        await registry.apply(here, source, [], cursor=noted)
        self.metrics.inc("dispatcher_registry_resyncs_total", region=source)

    def _count(self, source: str, applied: registry.Applied) -> None:
        if applied.written:
            self.metrics.inc("dispatcher_registry_applied_total", applied.written, region=source)
        if applied.superseded:
            self.metrics.inc(
                "dispatcher_registry_superseded_total", applied.superseded, region=source
            )

    async def _keys_match(self, source: str, there: Store) -> bool:
        """``source``'s webhook secrets are sealed with a key we hold (checked once a minute):
        records travel sealed, so every region needs the same ``security.encryption_keys``."""
        if time.monotonic() - self._keys_checked.get(source, float("-inf")) < KEYS_CHECK_EVERY_S:
            return source not in self._refused
        found = encryption.problem(await encryption.read_kid(there), self.regions.home.keyring)
        self._keys_checked[source] = time.monotonic()
        if found is None:
            self._refused.discard(source)
            return True
        if source not in self._refused:
            log.error("registry.key_mismatch", region=source, problem=found)
            self._refused.add(source)
        return False

    async def _trim(self, stop: asyncio.Event) -> None:
        async def step() -> None:
            for shard in await self.regions.home.all_shards():
                await registry.trim(shard, MAX_AGE_MS)

        outage = loops.Outage("registry.trim", self.metrics)
        await loops.run_every(step, outage, stop, TRIM_EVERY_S)
