"""The dead-letter queue: a stream of dead jobs, whose entry ids make a stable cursor.

Every verb does bounded work per Redis call and reads no payload but ``inspect``'s one job:
listings read the records' meta only (dlq_page.lua) and counts read entry ids only
(dlq_count.lua). This module lists, inspects and counts the DLQ and owns its cursor and bounds;
replay and purge, one page of at most ``PAGE`` entries per script, are in ``dlq_ops.py``.
"""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from dispatcher.errors import InvalidField, NotFound
from dispatcher.ids import is_region_name, sid_ms
from dispatcher.model import Job, JobState, rfc3339
from dispatcher.queue import codec, records
from dispatcher.queue.keys import MAX_SHARDS
from dispatcher.queue.records import redis_errors, region_store
from dispatcher.queue.regions import reaching

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from dispatcher.queue.regions import Regions
    from dispatcher.queue.store import Store


#: DLQ entries one replay or purge step (and so one admin request) handles at most.
PAGE = 1000
#: DLQ entries one replay or purge script handles at most, so Redis is never held long (a call
#: replaying 200 jobs with 2 KB payloads took about 9 ms on the development machine).
SCRIPT_PAGE = 200
#: DLQ entries one counting script reads at most (entry ids only, no record; about 6 ms a call,
#: so 100 000 entries are counted in about 0.3 s).
COUNT_PAGE = 2000
#: Job ids one replay by ids takes at most (``Client.replay`` and ``POST /v1/dlq/replay``).
MAX_REPLAY_IDS = 1000
MAX_ID_PART = 2**63  # well inside Redis's 64-bit parts, so "(<id>" stays a valid start

#: XRANGE entries with decode_responses off.
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


async def dlq_size(store: Store) -> int:
    """Entries in the DLQ of every shard."""
    size = 0
    with redis_errors():
        for shard in await store.all_shards():
            size += int(await shard.redis.xlen(shard.keys.dlq))
    return size


async def count_entries(store: Store, start: str, end: str) -> int:
    """Entries from ``start`` to ``end`` (XRANGE syntax), counted by id in bounded calls."""
    total = 0
    while True:
        with redis_errors():
            counted, last = await store.scripts.dlq_count(
                keys=[store.keys.dlq], args=[start, end, COUNT_PAGE]
            )
        total += int(counted)
        if int(counted) < COUNT_PAGE:
            return total
        start = f"({last.decode()}"


async def last_entry(store: Store, before_ms: int | None = None) -> str | None:
    """The id of the DLQ's last entry, or of its last one added before ``before_ms`` (None:
    there is none)."""
    end = end_bound(before_ms)
    with redis_errors():
        last = await cast(
            "Awaitable[_Entries]", store.redis.xrevrange(store.keys.dlq, end, "-", count=1)
        )
    return last[0][0].decode() if last else None


# --- listing and inspecting ------------------------------------------------------------------

#: The largest page ``GET /v1/dlq`` answers.
MAX_PAGE = 100
#: Entries one filtered listing reads at most before it answers with a cursor (bounded work).
MAX_SCANNED = 1000
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
_SHARD_DIGITS = len(str(MAX_SHARDS))


def start_bound(since_ms: int | None) -> str:
    """The XRANGE start of the entries added at or after ``since_ms`` ("-": all)."""
    return "-" if since_ms is None else f"{min(max(since_ms, 0), MAX_ID_PART)}-0"


def end_bound(before_ms: int | None) -> str:
    """The XRANGE end (inclusive) of the entries added before ``before_ms`` ("+": all). DLQ
    entry ids are their ms times (a time before 1970 reads as ms 1: no entry is that old)."""
    if before_ms is None:
        return "+"
    return str(min(max(before_ms, 1), MAX_ID_PART) - 1)


def is_entry_id(value: object) -> bool:
    if not isinstance(value, str) or _ENTRY_ID.fullmatch(value) is None:
        return False
    return all(part < MAX_ID_PART for part in sid_key(value))


@dataclass(frozen=True, slots=True)
class _Dead:
    """One DLQ entry with the dead job it names (None when malformed or its record is gone)."""

    entry_id: str
    job_id: str | None
    reason: str
    job: Job | None
    raw: str | None

    def matches(
        self, webhook_id: str | None, tenant_id: str | None, reason: str | None = None
    ) -> bool:
        if reason is not None and self.reason != reason:
            return False
        if webhook_id is None and tenant_id is None:
            return True
        if self.job is None or self.job.is_task:  # a task has no webhook nor tenant (null)
            return False
        return (webhook_id is None or self.job.webhook_id == webhook_id) and (
            tenant_id is None or self.job.tenant_id == tenant_id
        )

    def to_wire(self) -> dict[str, Any]:
        job = self.job
        task = job is not None and job.is_task
        return {
            "id": self.job_id,
            "dlq_id": self.entry_id,
            "kind": "task" if task else "webhook",
            "webhook_id": job.webhook_id if job and not task else None,
            "tenant_id": job.tenant_id if job and not task else None,
            "event_type": job.event_type if job else None,
            "attempt": job.attempt if job else 0,
            "last_error": job.last_error if job else self.raw,
            "last_status": job.last_status if job else None,
            "reason": self.reason,
            "failed_at": rfc3339(
                job.finished_at_ms if job and job.finished_at_ms else sid_ms(self.entry_id)
            ),
        }


async def _read_page(store: Store, start: str, end: str, count: int) -> list[_Dead]:
    """DLQ entries from ``start`` to ``end`` (XRANGE syntax) with their jobs, payloads left out
    (dlq_page.lua reads only the records' meta)."""
    with redis_errors():
        flat = await store.scripts.dlq_page(
            keys=[store.keys.dlq, store.keys.jobs], args=[start, end, count]
        )
    page = []
    for i in range(0, len(flat), 5):
        sid, job_id_b, reason, raw, meta = flat[i : i + 5]
        job_id = job_id_b.decode() if job_id_b else None
        job = None
        if job_id is not None and meta:
            with suppress(ValueError, KeyError, TypeError):
                job = codec.decode_meta(job_id, meta)
        page.append(
            _Dead(
                entry_id=sid.decode(),
                job_id=job_id,
                reason=reason.decode(errors="replace"),
                job=job,
                raw=raw.decode(errors="replace") if raw else None,
            )
        )
    return page


_Position = tuple[tuple[int, int], int]  # (entry id, shard)


def is_cursor(value: object) -> bool:
    """A ``next_cursor``: a DLQ entry id, with ``.<shard>`` when there are several shards;
    with regions, ``<region>|`` before it (``<region>|`` alone: that region from its start)."""
    if not isinstance(value, str):
        return False
    region, bar, inner = value.rpartition("|")
    if bar:
        return is_region_name(region) and (inner == "" or is_cursor(inner))
    entry_id, dot, shard = value.partition(".")
    return is_entry_id(entry_id) and (not dot or (shard.isdigit() and len(shard) <= _SHARD_DIGITS))


def _position(cursor: str | None) -> _Position | None:
    """Where a listing goes on from: (entry id, shard), exclusive. A cursor without a shard
    was given with one shard only; it reads as the last shard of that entry id."""
    if cursor is None:
        return None
    entry_id, _, shard = cursor.partition(".")
    return sid_key(entry_id), int(shard) if shard else MAX_SHARDS


def sid_key(sid: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``, or ``<ms>``) as the numbers it sorts by."""
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def _sid(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"


async def _read_round(
    shards: list[Store], position: _Position | None, want: int, bounds: tuple[str, str] = ("-", "+")
) -> tuple[list[tuple[tuple[int, int], int, _Dead]], _Position | None]:
    """Up to ``want`` entries of every shard after ``position`` (within ``bounds``, XRANGE's
    start and end), merged, and the horizon: the lowest last entry of a full page (None when
    every shard was read to its end)."""
    merged: list[tuple[tuple[int, int], int, _Dead]] = []
    horizon: _Position | None = None
    first, end = bounds
    for shard in shards:
        number = shard.keys.shard
        if position is None or (first != "-" and position[0] < sid_key(first)):
            start = first
        else:
            start = f"({_sid(position[0])}" if number <= position[1] else _sid(position[0])
        page = await _read_page(shard, start, end, want)
        merged += [(sid_key(dead.entry_id), number, dead) for dead in page]
        if len(page) == want:
            last = (sid_key(page[-1].entry_id), number)
            horizon = last if horizon is None else min(horizon, last)
    merged.sort(key=lambda m: (m[0], m[1]))
    return merged, horizon


async def list_dead(
    store: Store,
    *,
    limit: int = 50,
    cursor: str | None = None,
    webhook_id: str | None = None,
    tenant_id: str | None = None,
    reason: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> dict[str, Any]:
    """A page of the DLQ, oldest first: ``{"items", "next_cursor"}``.

    ``reason`` keeps the entries dead for it; ``since_ms`` and ``until_ms`` bound the time
    they were dead-lettered (at or after, before) as stream ids, so they cost no scan.

    The cursor is the last entry examined (exclusive), so entries replayed or purged
    meanwhile never shift a page. A filtered listing reads at most ``MAX_SCANNED`` entries
    and may answer fewer items with a cursor to go on from; ``next_cursor`` is None at the end.
    With several shards their DLQs are merged by entry id (then shard): each round reads a
    page of every shard and takes entries up to the lowest last entry of a full page, beyond
    which a shard may hold entries not read yet.
    """
    limit = max(1, min(limit, MAX_PAGE))
    filtered = webhook_id is not None or tenant_id is not None or reason is not None
    bounds = (start_bound(since_ms), end_bound(until_ms))
    with redis_errors():
        shards = await store.all_shards()
    position = _position(cursor)

    def next_cursor() -> str | None:
        if position is None:
            return None
        sid = _sid(position[0])
        return sid if len(shards) == 1 else f"{sid}.{position[1]}"

    items: list[dict[str, Any]] = []
    scanned = 0
    while True:
        want = MAX_PAGE if filtered else limit - len(items)
        merged, horizon = await _read_round(shards, position, want, bounds)
        for key, number, dead in merged:
            if horizon is not None and (key, number) > horizon:
                break
            scanned += 1
            position = (key, number)
            if dead.matches(webhook_id, tenant_id, reason):
                items.append(dead.to_wire())
                if len(items) == limit:
                    return {"items": items, "next_cursor": next_cursor()}
        if horizon is None:
            return {"items": items, "next_cursor": None}
        if scanned >= MAX_SCANNED:
            return {"items": items, "next_cursor": next_cursor()}


async def list_regions(
    regions: Regions,
    scope: Sequence[str],
    *,
    limit: int = 50,
    cursor: str | None = None,
    **filters: Any,
) -> dict[str, Any]:
    """A page of the DLQs of the regions of ``scope`` (home first), region after region, as
    ``list_dead`` lists each (``filters`` are its own): ``next_cursor`` is
    ``<region>|<its cursor>``. A cursor without a region (given before regions) goes on in
    the first region of ``scope``. Each region reads at most ``MAX_SCANNED`` entries, and a
    region that stops short of its end answers with what it found."""
    limit = max(1, min(limit, MAX_PAGE))
    region, bar, inner = (cursor or "").rpartition("|")
    if not bar:
        region = scope[0]
    if region not in scope:
        raise InvalidField("cursor", "must be a next_cursor of an earlier page")
    items: list[dict[str, Any]] = []
    after: str | None = inner or None
    for name in scope[scope.index(region) :]:
        if len(items) == limit:
            return {"items": items, "next_cursor": f"{name}|"}
        where, remote = await region_store(regions, name)
        with reaching(remote):
            page = await list_dead(where, limit=limit - len(items), cursor=after, **filters)
        items += page["items"]
        if page["next_cursor"] is not None:
            return {"items": items, "next_cursor": f"{name}|{page['next_cursor']}"}
        after = None
    return {"items": items, "next_cursor": None}


async def inspect(store: Store, job_id: str) -> dict[str, Any]:
    """A dead job with its payload and attempts; NotFound unless the job is in the DLQ."""
    job = await records.get_job(store, job_id)
    if job is None or job.state is not JobState.DEAD:
        raise NotFound(f"no dead job {job_id!r} in the DLQ")
    wire = job.to_wire(with_payload=True)
    wire["dlq_id"] = job.dlq_id
    return wire
