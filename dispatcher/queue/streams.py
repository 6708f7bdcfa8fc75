"""The worker's side of the ready stream: claim, load, settle, reclaim, quarantine.

A claim is an entry read through the consumer group (it sits in the PEL, so nothing leaves
Redis before its outcome is written) plus a fencing token: the entry's delivery count when
this consumer got it. ``settle.lua`` writes an outcome only while the entry is still pending
for this consumer with that count, checked for each claim on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis.exceptions as rex

from dispatcher.queue import codec
from dispatcher.queue.admission import lease_member
from dispatcher.queue.keys import GROUP

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from dispatcher.model import Job
    from dispatcher.queue.store import Store

POISON_STALLS = 3

#: An XREADGROUP reply as redis-py gives it with decode_responses off:
#: [(stream, [(sid, fields or None for an entry deleted while pending)])], or None.
_ReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]] | None


# Claim and Settlement are made once per job on the hot path: plain slotted dataclasses (a
# frozen one sets each field through object.__setattr__, several times slower to build).
# Nothing changes them once made.
@dataclass(slots=True)
class Claim:
    queue: str
    sid: str
    job_id: str
    webhook_id: str
    token: str
    inline: Job | None = field(default=None, compare=False)  # a fresh job read with its entry
    shard: int = 0  # the shard whose stream holds the entry (keys.py)
    #: When this process got the claim (monotonic s): older than the stall timeout, another
    #: worker may have taken it over (``keep_claim``).
    at: float = field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True, slots=True)
class MalformedEntry:
    """A ready-stream entry that does not decode as a job: quarantined as it is."""

    sid: str
    raw: bytes


class SettleKind(StrEnum):
    """What ``settle.lua`` does with an outcome; the value is the letter it reads."""

    DELIVERED = "D"  # finished: into the done zset (swept after the retention)
    RETRY = "R"  # a retry or a wait: into the delayed zset, due at the score
    DEAD = "X"  # finished: a DLQ entry, whose id the record keeps (kept until purged)
    PARKED = "P"  # into the webhook's parked zset while its breaker is open (else as RETRY)
    WAITING = "W"  # into the webhook's waiting set until room frees (waiting.py)
    HELD = "H"  # into the webhook's held zset while it is paused (else as RETRY, due now)


@dataclass(slots=True)
class Settlement:
    """One outcome to write: ``kind`` says what settle.lua does with it (``SettleKind``).

    ``parked_for``: the webhook whose parked zset takes a P job (its held zset an H job);
    ``waiting_in``: the webhook
    whose waiting set takes a W job. ``lease_of``: the webhook whose in-flight lease the
    attempt held, released now. ``frees``: as the attempt ended, that many of its webhook's
    waiting jobs go back to their queue.
    """

    claim: Claim
    kind: SettleKind
    record: bytes
    score_ms: int
    reason: str
    late_attempt: bytes
    parked_for: str | None = None
    lease_of: str | None = None
    waiting_in: str | None = None
    frees: int = 0


@dataclass(frozen=True, slots=True)
class ReclaimPage:
    cursor: str
    claims: list[Claim]
    poisoned: list[str]
    malformed: list[str]
    missing: list[str]
    more: bool = False  # entries idle past the stall timeout are left to take over


def is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, rex.ResponseError) and str(exc).startswith("NOGROUP")


async def ensure_group(store: Store, queue: str) -> bool:
    """Create the queue's stream and consumer group if missing; True when created."""
    try:
        await store.redis.xgroup_create(store.keys.ready(queue), GROUP, id="0", mkstream=True)
    except rex.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


async def claim_new(
    store: Store, streams: tuple[str, ...], consumer: str, *, budget: int
) -> tuple[list[Claim], list[tuple[str, MalformedEntry]]]:
    """Claim up to ``budget`` new entries, serving ``streams`` in order (one round trip)."""
    reply = await store.scripts.claim(
        keys=[store.keys.ready(s) for s in streams], args=[GROUP, consumer, budget]
    )
    claims: list[Claim] = []
    malformed: list[tuple[str, MalformedEntry]] = []
    for i in range(0, len(reply), 2):
        stream = streams[int(reply[i]) - 1]
        for sid_b, flat in reply[i + 1]:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            _add(stream, sid_b.decode(), fields, (claims, malformed), shard=store.keys.shard)
    return claims, malformed


async def wait_new(
    store: Store, streams: tuple[str, ...], consumer: str, *, count: int, block_ms: int
) -> tuple[list[Claim], list[tuple[str, MalformedEntry]]]:
    """Block until any of ``streams`` has new entries; claims up to ``count`` from each."""
    by_key = {store.keys.ready(s): s for s in streams}
    reply = await cast(
        "Awaitable[_ReadReply]",
        store.redis.xreadgroup(
            GROUP, consumer, dict.fromkeys(by_key, ">"), count=count, block=block_ms
        ),
    )
    claims: list[Claim] = []
    malformed: list[tuple[str, MalformedEntry]] = []
    for key, entries in reply or ():
        for sid_b, fields in entries:
            found = (claims, malformed)
            _add(by_key[key.decode()], sid_b.decode(), fields or {}, found, shard=store.keys.shard)
    return claims, malformed


def _add(
    stream: str,
    sid: str,
    fields: dict[bytes, bytes],
    found: tuple[list[Claim], list[tuple[str, MalformedEntry]]],
    *,
    shard: int,
) -> None:
    claim = _claim(shard, stream, sid, fields)
    if claim is None:
        found[1].append((stream, MalformedEntry(sid, _raw(fields))))
    else:
        found[0].append(claim)


def _claim(shard: int, queue: str, sid: str, fields: dict[bytes, bytes]) -> Claim | None:
    """A claim from a new entry: inline (the job's data is in it) or a reference to a record."""
    job_id, webhook_id = fields.get(b"j"), fields.get(b"w")
    if not job_id or not webhook_id:
        return None
    inline = None
    if codec.is_inline(fields):
        try:
            inline = codec.from_entry(job_id.decode(), queue, sid, fields)
        except (KeyError, ValueError, UnicodeDecodeError):
            return None
    return Claim(queue, sid, job_id.decode(), webhook_id.decode(), "1", inline, shard)


def _raw(fields: dict[bytes, bytes] | None) -> bytes:
    return orjson.dumps(
        {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (fields or {}).items()}
    )


@dataclass(frozen=True, slots=True)
class Loaded:
    jobs: list[Job | None]  # in claim order; None when unreadable
    webhooks: dict[str, bytes | None]
    breakers: dict[str, bytes]  # only webhooks that have one
    # webhooks in a run of failures (the failing hash): their successes must be reported even
    # after their breaker was forgotten, or the run would never end (breakers.py)
    failing: frozenset[str] = frozenset()


async def load(store: Store, claims: list[Claim]) -> Loaded:
    """The claimed jobs, their webhooks, their webhooks' breakers and runs of failures, in one
    round trip.

    Fresh jobs came inline with their entries; the records of the others are read in the
    same round trip.
    """
    webhook_ids = list(dict.fromkeys(c.webhook_id for c in claims))
    refs = [c for c in claims if c.inline is None]
    pipe = store.redis.pipeline(transaction=False)
    pipe.hmget(store.keys.webhooks, webhook_ids)
    pipe.hmget(store.keys.breakers, webhook_ids)
    pipe.hmget(store.keys.failing, webhook_ids)
    if refs:
        pipe.hmget(store.keys.jobs, [c.job_id for c in refs])
    replies = await pipe.execute()
    records = dict(zip((c.job_id for c in refs), replies[3] if refs else (), strict=True))
    jobs = [c.inline or codec.try_decode(c.job_id, records.get(c.job_id)) for c in claims]
    breakers = {
        wid: raw for wid, raw in zip(webhook_ids, replies[1], strict=True) if raw is not None
    }
    failing = frozenset(
        wid for wid, since in zip(webhook_ids, replies[2], strict=True) if since is not None
    )
    return Loaded(jobs, dict(zip(webhook_ids, replies[0], strict=True)), breakers, failing)


async def settle(
    store: Store, consumer: str, batch: list[Settlement], *, held: int | None = None
) -> list[str]:
    """Write a batch of outcomes of one queue; returns the ids whose claim was stale.

    Each claim is fenced on its own, whatever else this consumer has pending. ``held`` is
    ignored; it once bounded the fence's read and is still accepted from older callers.
    """
    del held
    keys = store.keys
    queue = batch[0].claim.queue
    script_keys = [
        keys.ready(queue),
        keys.jobs,
        keys.delayed(queue),
        keys.done,
        keys.dlq,
        keys.breakers,
        keys.waiters,
    ]
    extra: dict[str, int] = {}

    def index(key: str) -> int:
        if key not in extra:
            script_keys.append(key)
            extra[key] = len(script_keys)
        return extra[key]

    args: list[Any] = [GROUP, consumer, len(batch)]
    leases: list[Any] = []
    frees: dict[int, int] = {}  # index of a waiting zset -> jobs to release from it
    for s in batch:
        c = s.claim
        third: str | int = s.reason
        if s.parked_for:
            third = index(
                keys.held(s.parked_for) if s.kind is SettleKind.HELD else keys.parked(s.parked_for)
            )
        elif s.waiting_in:
            third = index(keys.waiting(s.waiting_in))
        args += [c.sid, c.job_id, c.token, s.kind, s.record, s.score_ms, third, s.late_attempt]
        if s.lease_of:
            leases += [index(keys.lease(s.lease_of)), lease_member(c.job_id, consumer)]
        if s.frees:
            waiting = index(keys.waiting(c.webhook_id))
            frees[waiting] = frees.get(waiting, 0) + s.frees
    tail = [len(leases) // 2, *leases, keys.base, *(x for pair in frees.items() for x in pair)]
    stale = await store.scripts.settle(keys=script_keys, args=args + tail)
    return [job_id.decode() for job_id in stale]


async def reclaim_page(
    store: Store,
    queue: str,
    consumer: str,
    *,
    min_idle_ms: int,
    cursor: str,
    count: int,
    held: Sequence[Claim] = (),
) -> ReclaimPage:
    """Keep ``held`` fresh, then take over up to ``count`` entries idle for ``min_idle_ms``
    from ``cursor`` on (``count`` 0: only keep ``held`` fresh; the cursor stays). ``more``
    tells whether idle entries are left (from the next cursor on; with ``count`` 0, anywhere).

    ``held``: the claims of this stream that the worker holds (waiting for a lane or being
    attempted). Their entries' idle time restarts, their tokens stay current, so no reclaim
    (this worker's or another's) takes them over while the worker lives. A takeover counts as a
    stall of the job only when another consumer held the entry.
    """
    keys = store.keys
    mine: list[Any] = [len(held)]
    for claim in held:
        mine += [claim.sid, claim.token]
    next_cursor, taken, poisoned, malformed, missing, more = await store.scripts.reclaim(
        keys=[keys.ready(queue), keys.jobs, keys.dlq],
        args=[
            GROUP,
            consumer,
            min_idle_ms,
            cursor,
            count,
            POISON_STALLS,
            store.clock.now_ms(),
            queue,
            *mine,
        ],
    )
    claims = [
        Claim(
            queue,
            taken[i].decode(),
            taken[i + 1].decode(),
            taken[i + 2].decode(),
            taken[i + 3].decode(),
            shard=store.keys.shard,
        )
        for i in range(0, len(taken), 4)
    ]
    return ReclaimPage(
        next_cursor.decode(),
        claims,
        [p.decode() for p in poisoned],
        [m.decode() for m in malformed],
        [m.decode() for m in missing],
        more=bool(more),
    )


async def keep_claim(store: Store, consumer: str, claim: Claim) -> bool:
    """Whether ``claim`` is still ``consumer``'s, its entry's idle time restarted if so (as a
    held claim's): a worker about to attempt a job it claimed long ago (it was frozen, say)
    attempts nothing when another worker took the job over meanwhile."""
    await reclaim_page(
        store, claim.queue, consumer, min_idle_ms=0, cursor="0-0", count=0, held=[claim]
    )
    pending = await store.redis.xpending_range(
        store.keys.ready(claim.queue), GROUP, claim.sid, claim.sid, 1, consumername=consumer
    )
    return bool(pending) and str(pending[0]["times_delivered"]) == claim.token


async def quarantine(store: Store, queue: str, reason: str, entries: list[MalformedEntry]) -> int:
    args: list[Any] = [GROUP, reason]
    for entry in entries:
        args += [entry.sid, entry.raw]
    moved: int = await store.scripts.quarantine(
        keys=[store.keys.ready(queue), store.keys.dlq, store.keys.jobs], args=args
    )
    return moved
