"""The relay: forwards this region's outboxes into the other regions' queues.

publish.lua writes each job of another region's webhook into an outbox of this region, one per
(shard, destination). For each, one process of this region holds its lease
(``queue/outbox.py``) and, in order, sends the entries still pending (read before but not
acked: a relay died, or an apply got no answer) and then the new ones, a batch at a time, to
``relay_apply.lua`` in the destination's same shard; it acks and deletes a batch here only once
the destination answered. So nothing is lost (at least once), a job the destination has is not
written again (idempotent by job id: ``dispatcher_relay_skipped_total``), and a FIFO webhook's
jobs reach its lanes in publish order, as one holder applies one stream in id order.

A destination that is down: the holder backs off and retries the same entries (logged once
per outage, ``relay.unavailable``); meanwhile the outbox grows, and this region's publishes
are untouched. A job whose webhook the destination has no record of yet (the registry
replicator has not brought it) waits there, with the entries after it, and is retried shortly
(``relay.waiting_for_webhook``, once per webhook). A destination that answers ``fenced`` has
seen a newer holder's token: this one lets its lease go and competes for it again.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import structlog

from dispatcher.errors import RegionUnavailable
from dispatcher.loops import FAILED, Outage, attempt, sleep_until_stop
from dispatcher.queue import outbox
from dispatcher.queue.regions import reaching

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dispatcher.metrics import Metrics
    from dispatcher.queue.outbox import Entry
    from dispatcher.queue.regions import Regions
    from dispatcher.queue.store import Store

log = structlog.get_logger()

#: How often the shards and destinations to relay are looked at again.
DISCOVER_S = 5.0
#: How long a process without a lease waits before asking for it again.
LEASE_POLL_S = 2.0
#: A holder renews its lease when idle this long (the lease lives outbox.LEASE_MS).
RENEW_S = 3.0
#: How long a read waits for new entries.
BLOCK_MS = 1000
#: The wait before entries whose webhook the destination lacks are sent again (jittered).
WAITING_S = (0.2, 0.5)
#: The longest back-off while a destination is unreachable.
UNREACHABLE_CAP_S = 2.0


class _Unreachable:
    """One destination's outage: a jittered back-off, logged once (``relay.unavailable``) when
    it starts and once when it ends, whichever of its shards' relays notice."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.failures = 0

    async def failed(self, exc: BaseException, stop: asyncio.Event) -> None:
        if self.failures == 0:
            cause = exc.__cause__ or exc
            log.warning("relay.unavailable", region=self.region, error=str(cause) or repr(cause))
        self.failures += 1
        delay = min(UNREACHABLE_CAP_S, 0.05 * 2 ** min(self.failures, 10))
        await sleep_until_stop(stop, delay * random.uniform(0.5, 1.0))

    def ok(self) -> None:
        if self.failures:
            log.info("relay.recovered", region=self.region, failures=self.failures)
            self.failures = 0


class Relay:
    def __init__(self, regions: Regions, metrics: Metrics, *, consumer: str) -> None:
        self.regions, self.metrics, self.consumer = regions, metrics, consumer
        self._unreachable: dict[str, _Unreachable] = {}
        #: The webhooks logged as waiting for their record in a destination (once each).
        self.waiting: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: one relay per (local shard, other region), each competing for
        its outbox's lease. Without regions, nothing."""
        if not self.regions.enabled:
            await stop.wait()
            return
        outage = Outage("relay", self.metrics)
        relays: dict[tuple[int, str], asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                routes = await attempt(self._routes, outage, stop)
                if routes is FAILED:
                    continue
                for shard, region in routes:
                    if (shard, region) not in relays:
                        relays[shard, region] = asyncio.create_task(
                            self._relay(shard, region, stop)
                        )
                await sleep_until_stop(stop, DISCOVER_S)
        finally:
            if not stop.is_set():  # cancelled: the relays go too
                for task in relays.values():
                    task.cancel()
            await asyncio.gather(*relays.values(), return_exceptions=True)

    async def _routes(self) -> list[tuple[int, str]]:
        """Each (shard, destination) this process may relay: every shard that may hold work,
        every other region (none without regions)."""
        layout = await self.regions.home.read_layout()
        if not self.regions.enabled:
            return []
        return [(k, region) for k in range(layout.served) for region in self.regions.others]

    async def _relay(self, shard: int, region: str, stop: asyncio.Event) -> None:
        """Until ``stop``: hold the lease of shard ``shard``'s outbox to ``region`` when free,
        and relay it while held."""
        outage = Outage("relay", self.metrics)
        unreachable = self._unreachable.setdefault(region, _Unreachable(region))
        holder = _Holder(self, self.regions.home.shard(shard), region, stop)
        holder.outage, holder.unreachable = outage, unreachable
        try:
            while not stop.is_set():
                try:
                    if holder.token is None and not await holder.acquire():
                        outage.ok()
                        await sleep_until_stop(stop, LEASE_POLL_S)
                        continue
                    await holder.hold()
                except asyncio.CancelledError:
                    raise
                except RegionUnavailable as exc:
                    await unreachable.failed(exc, stop)
                except Exception as exc:  # this region's Redis, or a script's error
                    await outage.failed(exc, stop)
        finally:
            if holder.token is not None:
                await holder.release()


class _Holder:
    """The relay of one outbox (a shard of this region, a destination) and its lease."""

    def __init__(self, relay: Relay, here: Store, region: str, stop: asyncio.Event) -> None:
        self.relay, self.here, self.region, self.stop = relay, here, region, stop
        self.token: str | None = None
        self.floor = 0  # the highest epoch a fence reported: the next token's must be above
        self.renewed = 0.0
        self.source = relay.regions.name or ""
        self.outage = Outage("relay", relay.metrics)  # this region's Redis failing
        self.unreachable = _Unreachable(region)  # the destination's

    async def acquire(self) -> bool:
        layout = await self.relay.regions.home.read_layout()
        incarnation = layout.incarnation or "-"
        self.token = await outbox.acquire(self.here, self.region, incarnation, self.floor)
        if self.token is None:
            return False
        self.renewed = time.monotonic()
        log.info("relay.holding", region=self.region, shard=self.here.keys.shard, token=self.token)
        return True

    async def release(self) -> None:
        token, self.token = self.token, None
        if token is None:
            return
        try:
            async with asyncio.timeout(1):
                await outbox.release(self.here, self.region, token)
        except Exception:  # best effort: the lease expires anyway
            return

    async def _renew(self, sids: Sequence[str] = ()) -> bool:
        """Ack ``sids`` and renew the lease; False (and no token) once it is someone else's."""
        assert self.token is not None  # noqa: S101 - only called while holding
        if await outbox.ack(self.here, self.region, self.token, sids):
            self.renewed = time.monotonic()
            self.outage.ok()
            return True
        log.info("relay.lease_lost", region=self.region, shard=self.here.keys.shard)
        self.token = None
        return False

    async def hold(self) -> None:
        """Relay while the lease is held: the pending entries first (from the start, every
        time: after a failure too), then the new ones, until ``stop`` or the lease is lost."""
        if not await self._renew():
            return
        await outbox.ensure_group(self.here, self.region)
        cursor = "0-0"
        while not self.stop.is_set():
            cursor, entries, deleted = await outbox.pending(
                self.here, self.region, self.relay.consumer, cursor
            )
            if deleted and not await self._renew(deleted):
                return
            if entries and not await self._send(entries, resent=True):
                return
            if cursor == "0-0":
                break
        while not self.stop.is_set():
            entries = await self._read_new()
            if entries:
                if not await self._send(entries, resent=False):
                    return
            elif time.monotonic() - self.renewed > RENEW_S and not await self._renew():
                return

    async def _read_new(self) -> list[Entry]:
        """New entries, waiting up to ``BLOCK_MS`` for one, or none once ``stop`` is set (the
        read is cut short: what it read stays pending, for the next holder to send)."""
        read = asyncio.create_task(
            outbox.read_new(self.here, self.region, self.relay.consumer, BLOCK_MS)
        )
        stopping = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait((read, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (read, stopping):
                task.cancel()
            await asyncio.gather(read, stopping, return_exceptions=True)
        if read.cancelled() or (self.stop.is_set() and read.exception() is not None):
            return []
        return read.result()

    async def _send(self, entries: list[Entry], *, resent: bool) -> bool:
        """Apply ``entries`` in the destination and ack what it has; False once the lease is
        lost or the destination fenced this holder off."""
        relay, metrics, region = self.relay, self.relay.metrics, self.region
        while entries:
            assert self.token is not None  # noqa: S101 - only called while holding
            with reaching(self.region):
                dest = relay.regions.store(self.region).shard(self.here.keys.shard)
                result = await outbox.apply(dest, self.source, self.token, entries)
            self.unreachable.ok()
            if result.fenced:
                assert result.fence is not None  # noqa: S101 - fenced says so
                metrics.inc("dispatcher_relay_fenced_total", region=region)
                log.warning(
                    "relay.fenced", region=self.region, token=self.token, fence=result.fence
                )
                self.floor = max(self.floor, outbox.fence_epoch(result.fence))
                await self.release()
                return False
            done, entries = entries[: result.done], entries[result.done :]
            metrics.inc("dispatcher_relay_sent_total", result.applied, region=region)
            metrics.inc("dispatcher_relay_skipped_total", result.skipped, region=region)
            if resent:
                metrics.inc("dispatcher_relay_resent_total", len(done), region=region)
                metrics.inc("dispatcher_relay_reapplied_total", result.applied, region=region)
            if result.malformed:
                log.warning("relay.malformed", region=self.region, entries=result.malformed)
            for entry in done:
                relay.waiting.discard(entry.webhook_id)
            if not await self._renew([entry.sid for entry in done]):
                return False
            if result.waiting:
                webhook_id = entries[0].webhook_id
                if webhook_id not in relay.waiting:
                    relay.waiting.add(webhook_id)
                    log.info("relay.waiting_for_webhook", region=self.region, webhook_id=webhook_id)
                await sleep_until_stop(self.stop, random.uniform(*WAITING_S))
                if self.stop.is_set():
                    return True
        return True
