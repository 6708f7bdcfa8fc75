"""The dead-letter queue: a stream of dead jobs, whose entry ids make a stable cursor."""

from __future__ import annotations

import re
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from dispatcher.errors import NotFound
from dispatcher.model import Job, JobState, is_job_id, rfc3339, sid_ms
from dispatcher.queue import records
from dispatcher.queue.keys import MAX_SHARDS, shard_of
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from dispatcher.queue.store import Store


async def dlq_size(store: Store) -> int:
    """Entries in the DLQ of every shard."""
    size = 0
    with redis_errors():
        for shard in await store.all_shards():
            size += int(await shard.redis.xlen(shard.keys.dlq))
    return size


async def replay(store: Store, job_ids: list[str]) -> list[str]:
    """Put dead jobs back in their ready queues; returns the ids replayed.

    Unknown ids and jobs that are not dead are skipped, so a replay can be repeated safely.
    """
    by_shard: defaultdict[int, list[str]] = defaultdict(list)
    for job_id in dict.fromkeys(job_ids):
        if is_job_id(job_id):
            by_shard[shard_of(job_id)].append(job_id)
    replayed: list[str] = []
    for shard, ids in by_shard.items():
        replayed += await _replay_in(store.shard(shard), ids)
    return replayed


async def _replay_in(store: Store, ids: list[str]) -> list[str]:
    if not ids:
        return []
    keys = store.keys
    with redis_errors():
        # decode_responses is off: the records are bytes, whatever redis-py's types say
        raws = await cast("Awaitable[list[bytes | None]]", store.redis.hmget(keys.jobs, ids))
    by_queue: defaultdict[str, list[str]] = defaultdict(list)
    for job_id, raw in zip(ids, raws, strict=True):
        if raw is not None and not raw.startswith(b"@"):  # a locator: queued, not dead
            by_queue[Job.decode(job_id, raw).stream].append(job_id)
    replayed: list[str] = []
    for queue, queue_ids in by_queue.items():
        with redis_errors():
            done, _skipped = await store.scripts.replay(
                keys=[keys.dlq, keys.jobs, keys.ready(queue)], args=[queue, *queue_ids]
            )
        replayed += [r.decode() for r in done]
    return replayed


# --- listing and inspecting ------------------------------------------------------------------

#: The largest page ``GET /v1/dlq`` answers.
MAX_PAGE = 100
#: Entries one filtered listing reads at most before it answers with a cursor (bounded work).
MAX_SCANNED = 1000
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
_SHARD_DIGITS = len(str(MAX_SHARDS))

#: XRANGE entries with decode_responses off.
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


_MAX_ID_PART = 2**63  # well inside Redis's 64-bit parts, so "(<id>" stays a valid start


def is_entry_id(value: object) -> bool:
    if not isinstance(value, str) or _ENTRY_ID.fullmatch(value) is None:
        return False
    ms, _, seq = value.partition("-")
    return int(ms) < _MAX_ID_PART and int(seq) < _MAX_ID_PART


@dataclass(frozen=True, slots=True)
class _Dead:
    """One DLQ entry with the dead job it names (None when malformed or its record is gone)."""

    entry_id: str
    job_id: str | None
    reason: str
    job: Job | None
    raw: str | None

    def matches(self, webhook_id: str | None, tenant_id: str | None) -> bool:
        if webhook_id is None and tenant_id is None:
            return True
        if self.job is None:
            return False
        return (webhook_id is None or self.job.webhook_id == webhook_id) and (
            tenant_id is None or self.job.tenant_id == tenant_id
        )

    def to_wire(self) -> dict[str, Any]:
        job = self.job
        return {
            "id": self.job_id,
            "dlq_id": self.entry_id,
            "webhook_id": job.webhook_id if job else None,
            "tenant_id": job.tenant_id if job else None,
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
    """DLQ entries from ``start`` to ``end`` (XRANGE syntax) with their job records."""
    with redis_errors():
        entries = await cast(
            "Awaitable[_Entries]", store.redis.xrange(store.keys.dlq, start, end, count=count)
        )
        job_ids = [f[b"j"].decode() for _sid, f in entries if b"j" in f]
        raws = (
            await cast("Awaitable[list[bytes | None]]", store.redis.hmget(store.keys.jobs, job_ids))
            if job_ids
            else []
        )
    records = dict(zip(job_ids, raws, strict=True))
    page = []
    for sid_b, fields in entries:
        job_id = fields[b"j"].decode() if b"j" in fields else None
        raw = records.get(job_id) if job_id else None
        job = None
        if job_id is not None and raw is not None and not raw.startswith(b"@"):
            with suppress(ValueError, KeyError, TypeError):
                job = Job.decode(job_id, raw)
        page.append(
            _Dead(
                entry_id=sid_b.decode(),
                job_id=job_id,
                reason=fields.get(b"r", b"").decode(errors="replace"),
                job=job,
                raw=fields[b"raw"].decode(errors="replace") if b"raw" in fields else None,
            )
        )
    return page


_Position = tuple[tuple[int, int], int]  # (entry id, shard)


def is_cursor(value: object) -> bool:
    """A ``next_cursor``: a DLQ entry id, with ``.<shard>`` when there are several shards."""
    if not isinstance(value, str):
        return False
    entry_id, dot, shard = value.partition(".")
    return is_entry_id(entry_id) and (not dot or (shard.isdigit() and len(shard) <= _SHARD_DIGITS))


def _position(cursor: str | None) -> _Position | None:
    """Where a listing goes on from: (entry id, shard), exclusive. A cursor without a shard
    was given with one shard only; it reads as the last shard of that entry id."""
    if cursor is None:
        return None
    entry_id, _, shard = cursor.partition(".")
    return _sid_key(entry_id), int(shard) if shard else MAX_SHARDS


def _sid_key(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def _sid(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"


async def _read_round(
    shards: list[Store], position: _Position | None, want: int
) -> tuple[list[tuple[tuple[int, int], int, _Dead]], _Position | None]:
    """Up to ``want`` entries of every shard after ``position``, merged, and the horizon: the
    lowest last entry of a full page (None when every shard was read to its end)."""
    merged: list[tuple[tuple[int, int], int, _Dead]] = []
    horizon: _Position | None = None
    for shard in shards:
        number = shard.keys.shard
        if position is None:
            start = "-"
        else:
            start = f"({_sid(position[0])}" if number <= position[1] else _sid(position[0])
        page = await _read_page(shard, start, "+", want)
        merged += [(_sid_key(dead.entry_id), number, dead) for dead in page]
        if len(page) == want:
            last = (_sid_key(page[-1].entry_id), number)
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
) -> dict[str, Any]:
    """A page of the DLQ, oldest first: ``{"items", "next_cursor"}``.

    The cursor is the last entry examined (exclusive), so entries replayed or purged
    meanwhile never shift a page. A filtered listing reads at most ``MAX_SCANNED`` entries
    and may answer fewer items with a cursor to go on from; ``next_cursor`` is None at the end.
    With several shards their DLQs are merged by entry id (then shard): each round reads a
    page of every shard and takes entries up to the lowest last entry of a full page, beyond
    which a shard may hold entries not read yet.
    """
    limit = max(1, min(limit, MAX_PAGE))
    filtered = webhook_id is not None or tenant_id is not None
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
        merged, horizon = await _read_round(shards, position, want)
        for key, number, dead in merged:
            if horizon is not None and (key, number) > horizon:
                break
            scanned += 1
            position = (key, number)
            if dead.matches(webhook_id, tenant_id):
                items.append(dead.to_wire())
                if len(items) == limit:
                    return {"items": items, "next_cursor": next_cursor()}
        if horizon is None:
            return {"items": items, "next_cursor": None}
        if scanned >= MAX_SCANNED:
            return {"items": items, "next_cursor": next_cursor()}


async def inspect(store: Store, job_id: str) -> dict[str, Any]:
    """A dead job with its payload and attempts; NotFound unless the job is in the DLQ."""
    job = await records.get_job(store, job_id)
    if job is None or job.state is not JobState.DEAD:
        raise NotFound(f"no dead job {job_id!r} in the DLQ")
    wire = job.to_wire(with_payload=True)
    wire["dlq_id"] = job.dlq_id
    return wire


# --- replay and purge --------------------------------------------------------------------------


async def _last_entry(store: Store) -> str | None:
    with redis_errors():
        last = await cast(
            "Awaitable[_Entries]", store.redis.xrevrange(store.keys.dlq, "+", "-", count=1)
        )
    return last[0][0].decode() if last else None


async def replay_matching(
    store: Store,
    *,
    webhook_id: str | None = None,
    tenant_id: str | None = None,
    since_ms: int | None = None,
) -> int:
    """Replay every dead job matching the filters, dead-lettered at or after ``since_ms``.

    Jobs that die again while this runs land after the entry that was last when it started,
    so they are not replayed a second time.
    """
    if webhook_id is not None:  # its dead jobs are all in its shard
        shards = [store.of_webhook(webhook_id)]
    else:
        with redis_errors():
            shards = await store.all_shards()
    replayed = 0
    for shard in shards:
        replayed += await _replay_matching_in(shard, webhook_id, tenant_id, since_ms)
    return replayed


async def _replay_matching_in(
    store: Store, webhook_id: str | None, tenant_id: str | None, since_ms: int | None
) -> int:
    end = await _last_entry(store)
    if end is None:
        return 0
    start = f"{min(max(since_ms, 0), _MAX_ID_PART)}-0" if since_ms is not None else "-"
    replayed = 0
    while True:
        page = await _read_page(store, start, end, MAX_PAGE)
        ids = [d.job_id for d in page if d.job_id and d.matches(webhook_id, tenant_id)]
        replayed += len(await _replay_in(store, ids))
        if len(page) < MAX_PAGE:
            return replayed
        start = f"({page[-1].entry_id}"


async def purge(store: Store, *, older_than_s: float, retention_s: float, confirm: bool) -> int:
    """Count (``confirm`` False) or delete the entries older than both ages, with their records,
    in every shard.

    Deleting removes exactly the entries counted, less any replayed meanwhile.
    """
    with redis_errors():
        shards = await store.all_shards()
    total = 0
    for shard in shards:
        total += await _purge_in(
            shard, older_than_s=older_than_s, retention_s=retention_s, confirm=confirm
        )
    return total


async def _purge_in(store: Store, *, older_than_s: float, retention_s: float, confirm: bool) -> int:
    cutoff_ms = store.clock.now_ms() - int(max(older_than_s, retention_s) * 1000)
    if cutoff_ms <= 0:
        return 0
    end = str(cutoff_ms - 1)  # XRANGE reads "ms" as "ms-<max>": every entry of that ms
    start, total = "-", 0
    while True:
        page = await _read_page(store, start, end, MAX_SCANNED)
        if confirm and page:
            args: list[str] = []
            for dead in page:
                args += [dead.entry_id, dead.job_id or ""]
            with redis_errors():
                total += int(
                    await store.scripts.purge(keys=[store.keys.dlq, store.keys.jobs], args=args)
                )
        else:
            total += len(page)
        if len(page) < MAX_SCANNED:
            return total
        start = f"({page[-1].entry_id}"
