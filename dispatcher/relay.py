"""The relay: forwards this region's outboxes into the other regions' queues.

publish.lua writes each job of another region's webhook into an outbox of this region, one per
(shard, destination). For each, one process of this region holds its lease
(``queue/outbox.py``) and, in order, sends the entries still pending (read before but not
acked: a relay died, or an apply got no answer) and then the new ones, a batch at a time, to
``relay_apply.lua`` in the destination's same shard; it acks and deletes a batch here only once
the destination answered. So nothing is lost (at least once), a job the destination has is not
written again (idempotent by job id: ``dispatcher_relay_skipped_total``), and a FIFO webhook's
jobs reach its lanes in publish order, as one holder applies one stream in id order.

Across a long link one batch at a time would cost each job the batch ahead of it plus a round
trip, so the new entries go on a connection of the holder's own (``outbox.ApplyLine``, a
standalone destination), up to ``DEPTH`` batches (and about ``DEPTH_BYTES``) in flight: a
reader sends each batch as it is read, and the holder reads the answers in order and acks
what they cover, several at a time (at least every ``ACK_EVERY_S`` while they keep coming).
The destination applies a batch only while every one sent before it on the line applied whole;
after one that stopped short (a webhook missing, an error) it refuses the rest, and the holder
goes back to the pending entries, sent one batch at a time from the first not acked, then
pipelines again. A line that fails leaves what it carried pending, sent again in order (the
destination skips what it has). A Cluster or Sentinel destination gets a batch at a time.

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
    from dispatcher.queue.outbox import Applied, Entry
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
#: The most batches a holder has in flight on its line to the destination: each new entry can
#: go at once, in a batch of its own, while others travel (a round trip at 200 jobs/s is ~16).
DEPTH = 32
#: No further batch is sent while those in flight hold this many bytes of entries.
DEPTH_BYTES = 8 << 20
#: While answers keep coming, the entries they cover are acked here together this often (an
#: ack per answer would cost a call per job at moderate rates; an entry acked later is at
#: worst sent again after a crash, and skipped).
ACK_EVERY_S = 0.05


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
        #: Each outbox's holder in this process, by (shard, destination).
        self.holders: dict[tuple[int, str], _Holder] = {}

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
                _end_if_cancelled()
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
        holder = self.holders[shard, region] = _Holder(
            self, self.regions.home.shard(shard), region, stop
        )
        holder.outage, holder.unreachable = outage, unreachable
        try:
            while not stop.is_set():
                _end_if_cancelled()
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
            await holder.close()


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
        self.line: outbox.ApplyLine | None = None  # the destination's, once looked at
        self.generation = 0  # of the batches pipelined on the line
        self.in_flight = 0  # batches sent on the line, not answered yet
        self.in_flight_bytes = 0  # the size of their entries
        self.in_flight_peak = 0
        self.refused = 0  # batches the destination refused, sent behind one that stopped short
        self.last_sent = ""  # the id of the last entry sent on the line
        #: Pending entries known not applied (refused, or behind a stop): not counted resent.
        self.unsent: set[str] = set()

    async def acquire(self) -> bool:
        layout = await self.relay.regions.home.read_layout()
        incarnation = layout.incarnation or "-"
        self.unsent.clear()  # what another holder sent since is not known here
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
        """Ack ``sids`` and renew the lease; False (and no token) once it is someone else's
        (``sids`` are acked all the same: the destination has them)."""
        if await outbox.ack(self.here, self.region, self.token or "", sids):
            self.renewed = time.monotonic()
            self.outage.ok()
            return True
        self._lost()
        return False

    def _lost(self) -> None:
        """The lease is someone else's now (or nobody's)."""
        if self.token is not None:
            log.info("relay.lease_lost", region=self.region, shard=self.here.keys.shard)
        self.token = None

    async def hold(self) -> None:
        """Relay while the lease is held: the pending entries first (from the start, every
        time: after a failure too), then the new ones, until ``stop`` or the lease is lost."""
        if not await self._renew():
            return
        await self.relay.regions.checked(self.region)
        await outbox.ensure_group(self.here, self.region)
        while not self.stop.is_set():
            _end_if_cancelled()
            if not await self._resend_pending():
                return
            line = self._line()
            if line is None:
                break
            if not await self._pipeline(line):
                return
        await self._one_at_a_time()

    async def _one_at_a_time(self) -> None:
        """Relay the new entries a batch at a time (a destination no line reaches), until
        ``stop`` or the lease is lost."""
        while not self.stop.is_set():
            _end_if_cancelled()
            entries = await self._read_new(self.stop)
            if self.token is None:
                return
            if entries:
                if not await self._send(entries, resent=False):
                    return
            elif time.monotonic() - self.renewed > RENEW_S and not await self._renew():
                return

    async def _resend_pending(self) -> bool:
        """Send the pending entries, a batch at a time, from the first; False once the lease
        is lost."""
        cursor = "0-0"
        while not self.stop.is_set():
            _end_if_cancelled()
            cursor, entries, deleted = await outbox.pending(
                self.here, self.region, self.relay.consumer, cursor
            )
            if deleted and not await self._renew(deleted):
                return False
            if entries and not await self._send(entries, resent=True):
                return False
            if cursor == "0-0":
                break
        return True

    def _line(self) -> outbox.ApplyLine | None:
        """This holder's line to the destination's shard; None when it can have none."""
        if self.line is None:
            with reaching(self.region):
                dest = self.relay.regions.store(self.region).shard(self.here.keys.shard)
            self.line = outbox.ApplyLine.of(dest, self.source)
        return self.line

    async def close(self) -> None:
        if self.line is not None:
            await self.line.close()

    async def _pipeline(self, line: outbox.ApplyLine) -> bool:
        """Relay the new entries with up to ``DEPTH`` batches in flight on ``line``, until
        ``stop``, or an answer that was not a whole batch applied: True to send the pending
        entries again (from the first not acked), False once the lease is lost or fenced."""
        self.generation += 1
        assert self.token is not None  # noqa: S101 - only called while holding
        generation = f"{self.token}/{self.generation}"
        sent: asyncio.Queue[list[Entry] | None] = asyncio.Queue()
        room = asyncio.Event()  # set when an answer made room
        halt = asyncio.Event()  # no more batches: one stopped short, or the lease is gone
        owner = asyncio.current_task()
        reader = asyncio.create_task(
            self._pipe_send(line, generation, sent, room, halt, owner=owner)
        )
        keep = True
        acks: list[str] = []  # entries b has, to ack here together (at most ACK_EVERY_S apart)
        acked = time.monotonic()
        try:
            while (entries := await sent.get()) is not None:
                _end_if_cancelled()
                with reaching(self.region):
                    result = await line.receive(len(entries))
                self.in_flight -= 1
                self.in_flight_bytes -= _size(entries)
                room.set()
                self.refused += result.refused
                if result.done < len(entries):  # stopped short, refused or fenced: no more
                    halt.set()
                    self.unsent.update(entry.sid for entry in entries[result.done :])
                if result.refused or not keep:  # pending: sent again (or by the next holder)
                    continue
                if not await self._handled(entries, result, resent=False, acks=acks):
                    keep = False
                    halt.set()
                    continue
                now = time.monotonic()
                if sent.empty() or len(acks) >= outbox.BATCH or now - acked >= ACK_EVERY_S:
                    keep, acks, acked = await self._renew(acks), [], now
                    if not keep:
                        halt.set()
            if acks and self.token is not None:
                keep = await self._renew(acks) and keep
            reader.result()  # its error (this region's Redis, the line) is the holder's
        finally:
            halt.set()
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if self.in_flight:  # answers left unread (an error here, a cancel): never reused
                await line.close()
            self.in_flight = self.in_flight_bytes = 0
        return keep and self.token is not None

    async def _pipe_send(
        self,
        line: outbox.ApplyLine,
        generation: str,
        sent: asyncio.Queue[list[Entry] | None],
        room: asyncio.Event,
        halt: asyncio.Event,
        *,
        owner: asyncio.Task[None] | None,
    ) -> None:
        """Read new entries and send each batch on ``line`` while there is room, until
        ``halt`` or ``stop`` (or ``owner``, the holder's task, is cancelled: it may be waiting
        on ``sent``); each batch sent is queued on ``sent`` for its answer, then None."""
        first = True
        try:
            while not (halt.is_set() or self.stop.is_set()):
                _end_if_cancelled(owner)
                while self.in_flight >= DEPTH or self.in_flight_bytes >= DEPTH_BYTES:
                    room.clear()
                    await room.wait()
                entries = [] if halt.is_set() else await self._read_new(self.stop, halt)
                if self.token is None:
                    return
                if not entries:
                    idle = time.monotonic() - self.renewed > RENEW_S
                    if idle and not self.in_flight and not await self._renew():
                        return
                    continue
                if halt.is_set() or self.token is None:
                    return  # read, not sent: pending, for the pending pass
                with reaching(self.region):
                    await line.send(self.token, ("+" if first else "=") + generation, entries)
                first, self.last_sent = False, entries[-1].sid
                self.in_flight += 1
                self.in_flight_bytes += _size(entries)
                self.in_flight_peak = max(self.in_flight_peak, self.in_flight)
                sent.put_nowait(entries)
        finally:
            sent.put_nowait(None)

    async def _read_new(self, *until: asyncio.Event) -> list[Entry]:
        """New entries, waiting up to ``BLOCK_MS`` for one, or none once one of ``until`` is
        set (the read is cut short: what it read stays pending, for the pending pass or the
        next holder to send), or once the lease is lost (no token then: nothing was read)."""
        if self.token is None:  # let go meanwhile (fenced)
            return []
        read = asyncio.create_task(
            outbox.read_new(self.here, self.region, self.relay.consumer, self.token, BLOCK_MS)
        )
        waits = [asyncio.create_task(event.wait()) for event in until]
        try:
            await asyncio.wait((read, *waits), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (read, *waits):
                task.cancel()
            await asyncio.gather(read, *waits, return_exceptions=True)
        cut = any(event.is_set() for event in until)
        if read.cancelled() or (cut and read.exception() is not None):
            return []
        entries = read.result()
        if entries is None:
            self._lost()
            return []
        return entries

    async def _send(self, entries: list[Entry], *, resent: bool) -> bool:
        """Apply ``entries`` in the destination and ack what it has; False once the lease is
        lost or the destination fenced this holder off."""
        relay = self.relay
        while entries:
            _end_if_cancelled()
            assert self.token is not None  # noqa: S101 - only called while holding
            with reaching(self.region):
                dest = relay.regions.store(self.region).shard(self.here.keys.shard)
                result = await outbox.apply(dest, self.source, self.token, entries)
            if not await self._handled(entries, result, resent=resent):
                return False
            entries = entries[result.done :]
            if result.waiting:
                webhook_id = entries[0].webhook_id
                if webhook_id not in relay.waiting:
                    relay.waiting.add(webhook_id)
                    log.info("relay.waiting_for_webhook", region=self.region, webhook_id=webhook_id)
                await sleep_until_stop(self.stop, random.uniform(*WAITING_S))
                if self.stop.is_set():
                    return True
        return True

    async def _handled(
        self, entries: list[Entry], result: Applied, *, resent: bool, acks: list[str] | None = None
    ) -> bool:
        """Count what the destination did with ``entries`` and ack those it has (or add them
        to ``acks``); False once the lease is lost or the destination fenced this holder off."""
        metrics, region = self.relay.metrics, self.region
        self.unreachable.ok()
        if result.fenced:
            assert result.fence is not None  # noqa: S101 - fenced says so
            metrics.inc("dispatcher_relay_fenced_total", region=region)
            log.warning("relay.fenced", region=self.region, token=self.token, fence=result.fence)
            self.floor = max(self.floor, outbox.fence_epoch(result.fence))
            await self.release()
            return False
        done = entries[: result.done]
        metrics.inc("dispatcher_relay_sent_total", result.applied, region=region)
        metrics.inc("dispatcher_relay_skipped_total", result.skipped, region=region)
        if resent:
            again = sum(entry.sid not in self.unsent for entry in done)
            metrics.inc("dispatcher_relay_resent_total", again, region=region)
            # B's answer does not say which it applied: at most this many were resends
            reapplied = min(result.applied, again)
            metrics.inc("dispatcher_relay_reapplied_total", reapplied, region=region)
        if self.unsent:
            self.unsent.difference_update(entry.sid for entry in done)
        if result.malformed:
            log.warning("relay.malformed", region=self.region, entries=result.malformed)
        for entry in done:
            self.relay.waiting.discard(entry.webhook_id)
        if acks is not None:
            acks += [entry.sid for entry in done]
            return True
        return await self._renew([entry.sid for entry in done])


def _end_if_cancelled(task: asyncio.Task[None] | None = None) -> None:
    """Raise CancelledError when ``task`` (this one by default) was asked to end. A
    cancellation that arrives inside a Redis call can be lost there (seen with redis-py 8 on
    Python 3.11: the call returns, or fails as a lost connection), and a loop that goes on
    after it never ends: the daemon's stop, or a test's, would wait for it forever."""
    task = task or asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _size(entries: list[Entry]) -> int:
    """About the bytes ``entries`` take on the line (their fields' values)."""
    return sum(len(value) for entry in entries for value in entry.fields.values())
