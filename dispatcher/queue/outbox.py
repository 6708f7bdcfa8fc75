"""The outbox verbs of the relay (``dispatcher/relay.py``): its lease, its reads, the apply in
the destination region and the ack.

publish.lua puts each job of another region's webhook into this region's outbox for that
region (``Keys.outbox``, the webhook's shard), in the same call as this region's own jobs. One
process per (shard, destination) holds the outbox's lease (``Keys.outbox_lease``), with a token
``<incarnation>:<epoch>`` whose epoch a counter gives (``Keys.outbox_epoch``); it reads the
entries through the consumer group ``relay`` (the pending ones first), applies them in the
destination's same shard (``relay_apply.lua``: idempotent by job id, fenced by the token) and
only then acks and deletes them here (``outbox_ack.lua``). An entry is therefore sent at least
once, and written in the destination at most once while its job's record is kept there.

``ApplyLine`` sends applies back to back on one connection of its own (``send``), their
answers read in order (``receive``), so several batches travel at once: each carries its
generation (keys.py ``relay_line``), and the destination refuses a batch sent behind one that
stopped short, so the entries of an outbox are still applied in their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis.exceptions as rex

from dispatcher.queue.connection import STANDALONE
from dispatcher.queue.keys import RELAY_GROUP

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from redis.asyncio.connection import AbstractConnection

    from dispatcher.queue.store import Store

#: How long a relay holder's lease lives unless renewed (each batch and every few seconds).
LEASE_MS = 10_000
#: Entries per read, so per apply in the destination.
BATCH = 256
#: The order of an outbox entry's fields in relay_apply.lua's arguments (``o`` may be absent).
_FIELDS = (b"j", b"w", b"t", b"e", b"q", b"c", b"n", b"p", b"o")
#: relay_apply.lua's answers other than done: a newer holder's fence, a webhook not there yet,
#: a batch sent behind one that stopped short.
_FENCED, _WAITING, _REFUSED = -1, -2, -3
#: How a batch was sent (relay_apply.lua's ARGV[2]): alone, no other in flight.
ALONE = "-"


@dataclass(frozen=True, slots=True)
class Entry:
    """One outbox entry: its id here and its fields (keys.py ``outbox``)."""

    sid: str
    fields: dict[bytes, bytes]

    @property
    def webhook_id(self) -> str:
        return self.fields.get(b"w", b"").decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Applied:
    """What the destination did with a batch: ``done`` entries handled from its start (all of
    them, or those before one whose webhook it does not know yet: ``waiting``), of which
    ``applied`` were written, ``skipped`` were there already and ``malformed`` dead-lettered;
    or nothing, ``fence`` naming the newer holder's token that refused it, or nothing, ``refused``
    as sent behind a batch that stopped short (``ApplyLine``)."""

    done: int
    applied: int = 0
    skipped: int = 0
    malformed: int = 0
    waiting: bool = False
    fence: str | None = None
    refused: bool = False

    @property
    def fenced(self) -> bool:
        return self.fence is not None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def ensure_group(store: Store, region: str) -> None:
    """The outbox's stream and the group ``relay`` reading it from its start."""
    try:
        await store.redis.xgroup_create(
            store.keys.outbox(region), RELAY_GROUP, id="0", mkstream=True
        )
    except rex.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def acquire(store: Store, region: str, incarnation: str, floor: int = 0) -> str | None:
    """Take the outbox's lease when nobody holds it: its token (``<incarnation>:<epoch>``, the
    epoch above ``floor``, the highest a fence reported), else None."""
    keys = store.keys
    if await store.redis.exists(keys.outbox_lease(region)):
        return None
    epoch = int(await store.redis.incr(keys.outbox_epoch(region)))
    if epoch <= floor:
        epoch = int(await store.redis.incrby(keys.outbox_epoch(region), floor + 1 - epoch))
    token = f"{incarnation}:{epoch}"
    taken = await store.redis.set(keys.outbox_lease(region), token, nx=True, px=LEASE_MS)
    return token if taken else None


async def ack(
    store: Store, region: str, token: str, sids: Sequence[str] = (), *, ttl_ms: int = LEASE_MS
) -> bool:
    """Ack and delete the entries ``sids`` and renew the lease (``ttl_ms``; 0 lets it go);
    whether the lease is still ``token``'s."""
    keys = store.keys
    held = await store.scripts.outbox_ack(
        keys=[keys.outbox(region), keys.outbox_lease(region)],
        args=[RELAY_GROUP, token, ttl_ms, *sids],
    )
    return bool(held)


async def release(store: Store, region: str, token: str) -> None:
    """Let the lease go, if it is still ``token``'s, so a successor need not wait it out."""
    await ack(store, region, token, ttl_ms=0)


def _entries(raw: list[tuple[bytes | str, dict[bytes, bytes] | None]]) -> list[Entry]:
    return [Entry(_text(sid), fields) for sid, fields in raw if fields is not None]


async def pending(
    store: Store, region: str, consumer: str, cursor: str = "0-0"
) -> tuple[str, list[Entry], list[str]]:
    """A page of the entries read but not acked (by any relay of the group, now ``consumer``'s),
    in id order from ``cursor``: the next cursor ("0-0" at the end), the entries, and the ids
    of entries pending but deleted."""
    reply: list[Any] = await store.redis.xautoclaim(
        store.keys.outbox(region), RELAY_GROUP, consumer, 0, cursor, count=BATCH
    )
    cursor, raw, *deleted = reply  # Redis 7 adds the ids of entries deleted meanwhile
    return _text(cursor), _entries(raw), [_text(sid) for sid in (deleted[0] if deleted else [])]


async def read_new(
    store: Store, region: str, consumer: str, token: str, block_ms: int
) -> list[Entry] | None:
    """Up to ``BATCH`` entries never read, waiting up to ``block_ms`` for one (0: not at all),
    read only while the lease is ``token``'s (``outbox_read.lua``): None once it is not."""
    keys = store.keys
    names, args = [keys.outbox(region), keys.outbox_lease(region)], [RELAY_GROUP, consumer, token]
    waited = False
    while True:
        reply: list[Any] = await store.scripts.outbox_read(keys=names, args=[*args, BATCH])
        if not int(reply[0]):
            return None
        if reply[1] or waited or not block_ms:
            return [Entry(_text(sid), _fields(flat)) for sid, flat in reply[1]]
        # every entry read: wait for one after the last (not XREADGROUP BLOCK, which would
        # take it whoever holds the lease by then)
        if not await store.redis.xread({keys.outbox(region): reply[2]}, count=1, block=block_ms):
            return []
        waited = True


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _apply_call(
    dest: Store, source: str, token: str, sent: str, entries: Sequence[Entry]
) -> tuple[list[str], list[bytes | str]]:
    """relay_apply.lua's keys and arguments for ``entries``."""
    keys = dest.keys
    args: list[bytes | str] = [token, sent]
    for entry in entries:
        args += [entry.fields.get(name, b"") for name in _FIELDS]
    names = [keys.jobs, keys.webhooks, keys.versions, keys.relay_fence(source), keys.dlq]
    return [*names, keys.relay_line(source)], args


def _applied(reply: list[Any], entries: int) -> Applied:
    status = int(reply[0])
    if status == _FENCED:
        return Applied(0, fence=_text(cast("bytes", reply[1])))
    if status == _REFUSED:
        return Applied(0, refused=True)
    applied, skipped, malformed = (int(n) for n in reply[-3:])
    waiting = status == _WAITING
    return Applied(
        int(reply[1]) - 1 if waiting else entries,
        applied=applied,
        skipped=skipped,
        malformed=malformed,
        waiting=waiting,
    )


async def apply(
    dest: Store, source: str, token: str, entries: Sequence[Entry], *, sent: str = ALONE
) -> Applied:
    """Write ``entries`` (in order) as jobs in ``dest``, the same shard of their region
    (``relay_apply.lua``); ``source`` is this region, whose fence the token must pass;
    ``sent`` how the batch was sent (``ALONE``: no other batch of this relay in flight)."""
    keys, args = _apply_call(dest, source, token, sent, entries)
    reply = await cast(
        "Awaitable[list[int | bytes]]", dest.scripts.relay_apply(keys=keys, args=args)
    )
    return _applied(reply, len(entries))


class ApplyLine:
    """A connection of its own to a destination shard (standalone Redis only: ``of``), on which
    applies are sent back to back and answered in the order sent.

    The first batch of a generation (a string no other generation of the source uses) is sent
    ``+<generation>``, the others ``=<generation>``: the destination applies a later batch only
    while the generation it holds is this one, i.e. every batch before it on this connection
    was applied whole. A batch that stopped short (a webhook missing: ``waiting``, or an error)
    deletes it, so the batches behind it answer ``refused`` and their entries stay pending
    here, to be sent again in order. A connection that fails loses nothing either: what was
    sent stays pending, and the destination skips what it has."""

    def __init__(self, dest: Store, source: str) -> None:
        pool = dest.redis.connection_pool
        self.dest, self.source = dest, source
        self._conn: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
        self._script = dest.scripts.relay_apply
        self._open = False
        self._sequence = 0  # of the batches sent in the current generation

    @classmethod
    def of(cls, dest: Store, source: str) -> ApplyLine | None:
        """A line to ``dest``, or None when it is no standalone Redis (a Cluster's slots, or a
        Sentinel's failovers, move under a lone connection: those relays apply one batch at a
        time through the pool)."""
        return cls(dest, source) if dest.mode == STANDALONE else None

    async def _ready(self) -> None:
        """Connected, with relay_apply.lua loaded (again after a reconnect: a restarted Redis)."""
        if self._open:
            return
        await self._conn.connect()  # type: ignore[no-untyped-call]
        await self._conn.send_command("SCRIPT", "LOAD", self._script.script)
        sha = _text(cast("bytes", await self._conn.read_response()))
        if sha != self._script.sha:  # the text is fixed: its sha can be no other
            raise rex.ResponseError(f"relay_apply.lua loaded as {sha}, not {self._script.sha}")
        self._open = True

    async def send(self, token: str, sent: str, entries: Sequence[Entry]) -> None:
        """Send one apply (``sent``: ``+`` or ``=`` and the generation); its answer is read by
        the ``receive`` matching it, in the order sent. Each batch of a generation is numbered
        (``#<n>``): the destination applies batch n only after batch n - 1 applied whole, so
        one it turned away unrun (out of memory, busy, loading) stops those behind it too."""
        self._sequence = 1 if sent.startswith("+") else self._sequence + 1
        try:
            await self._ready()
            numbered = f"{sent}#{self._sequence}"
            keys, args = _apply_call(self.dest, self.source, token, numbered, entries)
            sha = self._script.sha
            command = self._conn.pack_command("EVALSHA", sha, len(keys), *keys, *args)
            await self._conn.send_packed_command(command, check_health=False)
        except BaseException:
            await self.close()
            raise

    async def receive(self, entries: int) -> Applied:
        """The answer to the oldest apply sent and not yet received (of ``entries`` entries);
        an error reply (NOSCRIPT, a script's error) is raised, after the line is closed."""
        try:
            reply = await self._conn.read_response()
        except BaseException:
            await self.close()
            raise
        return _applied(cast("list[Any]", reply), entries)

    async def close(self) -> None:
        """Close the connection (a later ``send`` opens another); answers not read are lost,
        their entries pending here."""
        self._open = False
        await self._conn.disconnect(nowait=True)


def fence_epoch(fence: str) -> int:
    """The epoch of a relay token (``<incarnation>:<epoch>``); 0 when it has none."""
    epoch = fence.rpartition(":")[2]
    return int(epoch) if epoch.isdigit() else 0
