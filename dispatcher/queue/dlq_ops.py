"""Replay and purge of the dead-letter queue, page by page.

Replay and purge go one page of at most ``dlq.SCRIPT_PAGE`` entries per script.
``replay_step`` and ``purge_step`` do one bounded slice of a large replay or purge from a
``Position`` and say where to go on, so the admin API can do a page inline and leave the rest
to a background operation (``queue/operations.py``); ``replay_matching`` and ``purge`` go to
the end (the Python client's calls).

Regions (docs/regions.md): each verb takes ``regions`` and a plan its ``scope``, the regions it
acts on (home first), each region's shards walked in turn as one list, so a ``Position`` is the
same pair of numbers with or without regions. A replay by ids goes to each id's region
(``ids.region_of``). Without regions (``scope`` None) nothing changes: the store's own shards.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dispatcher.errors import ConfirmationRequired, InvalidField, NotReplayable
from dispatcher.ids import is_job_id, region_of
from dispatcher.queue.dlq import (
    MAX_REPLAY_IDS,
    PAGE,
    SCRIPT_PAGE,
    count_entries,
    dlq_size,
    last_entry,
    sid_key,
    start_bound,
)
from dispatcher.queue.keys import shard_of, streams_of
from dispatcher.queue.records import DEFAULT_QUEUE, redis_errors, region_store
from dispatcher.queue.regions import Regions, reaching

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dispatcher.queue.store import Store

# --- replay --------------------------------------------------------------------------------

#: Why a dead job cannot go back to its queue (replay.lua's reasons), as a caller reads it.
REASONS = {
    "payload_lost": "its payload was lost with its stream entry (dead as entry_missing), "
    "so there is nothing to send",
    "webhook_deleted": "its webhook was deleted",
    "webhook_disabled": "its webhook is disabled (it would die again unsent); enable it first",
    "malformed": "its DLQ entry or record cannot be read",
    "record_missing": "its job record is gone",
}
#: The ready streams replay.lua is given; it names any other a dead job needs (then retried).
_STREAMS: set[str] = set(streams_of(DEFAULT_QUEUE))
_MOST_NAMED = 5  # refused jobs named in an error's sentence (the details list them all)


@dataclass(frozen=True, slots=True)
class _Replayed:
    replayed: list[str]
    refused: list[tuple[str, str]]  # (job id, reason); job id '' for a malformed entry
    last: str  # the last DLQ entry read ('' none), mode 'range'
    read: int  # DLQ entries read, mode 'range'
    passed: list[tuple[str, str]]  # (job id, 'not_found' or 'not_dead'), mode 'ids'


async def _run_replay(store: Store, mode: str, args: list[str | int]) -> _Replayed:
    keys = store.keys
    while True:
        names = sorted(_STREAMS)
        with redis_errors():
            status, replayed, refused, last, read, passed = await store.scripts.replay(
                keys=[keys.dlq, keys.jobs, keys.webhooks, *(keys.ready(n) for n in names)],
                args=[mode, " ".join(names), *args],
            )
        if status == -1:
            _STREAMS.add(refused[0].decode())
            continue
        ids = [r.decode() for r in replayed]
        return _Replayed(ids, _pairs(refused), last.decode(), int(read), _pairs(passed))


def _pairs(flat: list[bytes]) -> list[tuple[str, str]]:
    return [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]


def _refuse(refused: list[tuple[str, str]]) -> None:
    if not refused:
        return
    named = "; ".join(f"{job_id}: {REASONS[reason]}" for job_id, reason in refused[:_MOST_NAMED])
    more = f" (and {len(refused) - _MOST_NAMED} more)" if len(refused) > _MOST_NAMED else ""
    raise NotReplayable(
        f"{len(refused)} dead job(s) cannot be replayed, so none was: {named}{more}",
        refused=[{"id": j, "reason": r, "message": REASONS[r]} for j, r in refused],
    )


def replay_ids(ids: object) -> list[str]:
    """The job ids of a replay by ids, checked: a list (or tuple) of 1 to ``MAX_REPLAY_IDS``
    strings, else ``InvalidField("ids")``. The one check of ``Client.replay`` and the API's
    ``{"ids": [...]}``, so a string is not read letter by letter and ``[]`` is not a no-op."""
    if (
        not isinstance(ids, list | tuple)
        or not 0 < len(ids) <= MAX_REPLAY_IDS
        or not all(isinstance(i, str) for i in ids)
    ):
        raise InvalidField("ids", f"must be a list of 1 to {MAX_REPLAY_IDS} job ids")
    return list(ids)


async def replay(
    store: Store, job_ids: list[str], *, regions: Regions | None = None
) -> dict[str, Any]:
    """Put dead jobs back in their ready queues: ``{"replayed": n, "not_found": [ids],
    "not_dead": [ids]}`` (the ids passed over, in the order given).

    All or nothing: when a dead job among them cannot go back (its payload was lost, its
    webhook was deleted or is disabled), ``NotReplayable`` names each such job and reason and
    nothing is replayed. Unknown ids and jobs that are not dead are passed over, so a replay
    can be repeated safely. Each part (a shard's ids, ``SCRIPT_PAGE`` at a time) is one script
    that checks before it writes; with several parts every part is checked first.

    With ``regions``, each id goes to the region it names, and the parts of every region are
    checked before any is written; a region that does not answer raises ``RegionUnavailable``
    (before any write when it fails during the check: a repeat is safe either way).
    """
    by_part: defaultdict[tuple[str | None, int], list[str]] = defaultdict(list)
    why: dict[str, str] = {}
    wanted = list(dict.fromkeys(replay_ids(job_ids)))
    located: dict[str | None, tuple[Store, str | None]] = {None: (store, None)}
    for job_id in wanted:
        if not is_job_id(job_id):
            why[job_id] = "not_found"
            continue
        region = None if regions is None else region_of(job_id)
        if region not in located:
            located[region] = await region_store(regions or Regions.single(store), region)
        by_part[(located[region][1], shard_of(job_id))].append(job_id)
    stores = {remote: where for where, remote in located.values()}
    parts = [
        (stores[remote].shard(shard), remote, ids[i : i + SCRIPT_PAGE])
        for (remote, shard), ids in by_part.items()
        for i in range(0, len(ids), SCRIPT_PAGE)
    ]
    if len(parts) > 1:
        refused: list[tuple[str, str]] = []
        for part, remote, ids in parts:
            with reaching(remote):
                refused += (await _run_replay(part, "check", [*ids])).refused
        _refuse(refused)
    replayed = 0
    for part, remote, ids in parts:
        with reaching(remote):
            answer = await _run_replay(part, "ids", [*ids])
        _refuse(answer.refused)  # with several parts: only if a job changed since the check
        replayed += len(answer.replayed)
        why.update(answer.passed)
    return {
        "replayed": replayed,
        "not_found": [j for j in wanted if why.get(j) == "not_found"],
        "not_dead": [j for j in wanted if why.get(j) == "not_dead"],
    }


@dataclass(frozen=True, slots=True)
class Position:
    """Where a replay or purge goes on: the index of a shard in its plan, and the last DLQ
    entry read there (exclusive; None: from the plan's start)."""

    shard: int = 0
    after: str | None = None


@dataclass(slots=True)
class Progress:
    """What one or more steps did: DLQ entries read, jobs replayed or entries purged, jobs
    skipped by reason, and where to go on (None: done)."""

    read: int = 0
    changed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    position: Position | None = field(default_factory=Position)

    def add(self, step: Progress) -> None:
        self.read += step.read
        self.changed += step.changed
        self.skipped.update(step.skipped)
        self.position = step.position


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """A replay of every dead job matching the filters. ``ends``: each shard's last DLQ entry
    when it began, or its last one before ``until`` (None: none), so jobs that die again
    meanwhile are not replayed twice."""

    shards: list[int]
    ends: list[str | None]
    start: str  # XRANGE start: "-" or "<since ms>-0"
    webhook_id: str | None = None
    tenant_id: str | None = None
    reason: str | None = None  # the DLQ entry's reason (an operation stored before: None)
    #: With regions: the region of each of ``shards`` (None: the store's own, as before).
    regions: list[str | None] | None = None


async def _places(
    store: Store, regions: Regions | None, scope: Sequence[str] | None
) -> list[tuple[Store, str | None, str | None]]:
    """Each region of ``scope`` (None: the store's own Redis): (its store, its name, the name
    for ``reaching``)."""
    if scope is None:
        return [(store, None, None)]
    places: list[tuple[Store, str | None, str | None]] = []
    for name in scope:
        where, remote = await region_store(regions or Regions.single(store), name)
        places.append((where, name, remote))
    return places


async def _shards_in(
    store: Store,
    regions: Regions | None,
    scope: Sequence[str] | None,
    webhook_id: str | None = None,
) -> list[tuple[Store, str | None, str | None]]:
    """Every shard a plan covers, region after region of ``scope`` (None: the store's own):
    (its store, its region as the plan records it, the name for ``reaching``). With
    ``webhook_id``, only its shard, where all its dead jobs are."""
    found: list[tuple[Store, str | None, str | None]] = []
    for where, name, remote in await _places(store, regions, scope):
        if webhook_id is not None:
            found.append((where.of_webhook(webhook_id), name, remote))
            continue
        with reaching(remote), redis_errors():
            found += [(shard, name, remote) for shard in await where.all_shards()]
    return found


async def _shard_at(
    store: Store, regions: Regions | None, plan: ReplayPlan | PurgePlan, index: int
) -> tuple[Store, str | None]:
    """The store of a plan's ``index``-th shard and the name for ``reaching`` around it."""
    region = plan.regions[index] if plan.regions else None
    if region is None:
        return store.shard(plan.shards[index]), None
    where, remote = await region_store(regions or Regions.single(store), region)
    return where.shard(plan.shards[index]), remote


async def plan_replay(
    store: Store,
    *,
    webhook_id: str | None = None,
    tenant_id: str | None = None,
    since_ms: int | None = None,
    reason: str | None = None,
    until_ms: int | None = None,
    regions: Regions | None = None,
    scope: Sequence[str] | None = None,
) -> ReplayPlan:
    """What ``replay_step`` replays: the dead jobs of the filters dead-lettered at or after
    ``since_ms`` and before ``until_ms``, for ``reason`` (each None: any), in the regions of
    ``scope`` (None: the store's own Redis). An empty text filter is refused: the script reads
    '' as "any", so it would replay every dead job."""
    for name, value in (("webhook_id", webhook_id), ("tenant_id", tenant_id), ("reason", reason)):
        if value == "":
            raise InvalidField(name, "must not be empty (leave it out to match any)")
    located = await _shards_in(store, regions, scope, webhook_id)
    ends = []
    for shard, _name, remote in located:
        with reaching(remote):
            ends.append(await last_entry(shard, until_ms))
    return ReplayPlan(
        [shard.keys.shard for shard, _name, _remote in located],
        ends,
        start_bound(since_ms),
        webhook_id,
        tenant_id,
        reason,
        None if scope is None else [name for _shard, name, _remote in located],
    )


async def replay_step(
    store: Store,
    plan: ReplayPlan,
    position: Position,
    budget: int = PAGE,
    *,
    regions: Regions | None = None,
) -> Progress:
    """Replay from ``position`` until ``budget`` DLQ entries were read or the plan is done.

    Jobs that cannot go back stay dead, counted in ``skipped`` by reason (``REASONS``).
    """
    progress = Progress()
    shard, after = position.shard, position.after
    while budget > 0 and shard < len(plan.shards):
        end = plan.ends[shard]
        if end is None:
            shard, after = shard + 1, None
            continue
        asked = min(budget, SCRIPT_PAGE)
        target, remote = await _shard_at(store, regions, plan, shard)
        with reaching(remote):
            answer = await _run_replay(
                target,
                "range",
                [
                    f"({after}" if after else plan.start,
                    end,
                    asked,
                    plan.webhook_id or "",
                    plan.tenant_id or "",
                    plan.reason or "",
                ],
            )
        progress.read += answer.read
        progress.changed += len(answer.replayed)
        progress.skipped.update(reason for _job_id, reason in answer.refused)
        if answer.read < asked or answer.last == end:
            shard, after = shard + 1, None
        else:
            after = answer.last
        budget -= answer.read
    progress.position = Position(shard, after) if shard < len(plan.shards) else None
    return progress


async def replay_matching(
    store: Store,
    *,
    webhook_id: str | None = None,
    tenant_id: str | None = None,
    since_ms: int | None = None,
    reason: str | None = None,
    until_ms: int | None = None,
    regions: Regions | None = None,
    scope: Sequence[str] | None = None,
) -> Progress:
    """Replay every dead job matching the filters, dead-lettered at or after ``since_ms``
    and before ``until_ms``, in the regions of ``scope``, page by page; jobs that cannot go
    back are skipped and counted by reason."""
    plan = await plan_replay(
        store,
        webhook_id=webhook_id,
        tenant_id=tenant_id,
        since_ms=since_ms,
        reason=reason,
        until_ms=until_ms,
        regions=regions,
        scope=scope,
    )
    total = Progress()
    while total.position is not None:
        total.add(await replay_step(store, plan, total.position, regions=regions))
    return total


async def replay_left(
    store: Store, plan: ReplayPlan, position: Position, *, regions: Regions | None = None
) -> int:
    """DLQ entries a replay has still to read from ``position`` (entry ids only)."""
    left = 0
    for index in range(position.shard, len(plan.shards)):
        end = plan.ends[index]
        if end is None:
            continue
        after = position.after if index == position.shard else None
        start = f"({after}" if after else plan.start
        target, remote = await _shard_at(store, regions, plan, index)
        with reaching(remote):
            left += await count_entries(target, start, end)
    return left


# --- purge ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PurgePlan:
    """A purge of the DLQ entries added before ``cutoff_ms`` (older than both ages)."""

    shards: list[int]
    cutoff_ms: int
    #: With regions: the region of each of ``shards`` (None: the store's own, as before).
    regions: list[str | None] | None = None

    @property
    def end(self) -> str:
        return str(self.cutoff_ms - 1)  # XRANGE reads "ms" as "ms-<max>": every entry of that ms


async def plan_purge(
    store: Store,
    *,
    older_than_s: float,
    retention_s: float,
    regions: Regions | None = None,
    scope: Sequence[str] | None = None,
) -> PurgePlan:
    """A purge of every shard of the regions of ``scope`` (None: the store's own Redis); the
    cutoff is read on the home region's clock."""
    located = await _shards_in(store, regions, scope)
    cutoff_ms = store.clock.now_ms() - int(max(older_than_s, retention_s) * 1000)
    return PurgePlan(
        [shard.keys.shard for shard, _name, _remote in located],
        cutoff_ms,
        None if scope is None else [name for _shard, name, _remote in located],
    )


async def purge_left(
    store: Store, plan: PurgePlan, position: Position, *, regions: Regions | None = None
) -> int:
    """Entries a purge has still to delete (by entry id, no record read): the whole DLQ of
    a shard whose last entry is older than the cutoff (XLEN), else counted by id."""
    if plan.cutoff_ms <= 0:
        return 0
    left = 0
    for index in range(position.shard, len(plan.shards)):
        shard, remote = await _shard_at(store, regions, plan, index)
        with reaching(remote):
            last = await last_entry(shard)
            if last is None:
                continue
            if sid_key(last) < (plan.cutoff_ms, 0):
                with redis_errors():
                    left += int(await shard.redis.xlen(shard.keys.dlq))
            else:
                left += await count_entries(shard, "-", plan.end)
    return left


async def purge_step(
    store: Store,
    plan: PurgePlan,
    position: Position,
    budget: int = PAGE,
    *,
    regions: Regions | None = None,
) -> Progress:
    """Delete from ``position`` until ``budget`` entries went or the plan is done."""
    progress = Progress()
    shard = position.shard
    while budget > 0 and shard < len(plan.shards) and plan.cutoff_ms > 0:
        target, remote = await _shard_at(store, regions, plan, shard)
        asked = min(budget, SCRIPT_PAGE)
        with reaching(remote), redis_errors():
            purged, _last = await target.scripts.purge(
                keys=[target.keys.dlq, target.keys.jobs], args=[plan.end, asked]
            )
        progress.read += int(purged)
        progress.changed += int(purged)
        if int(purged) < asked:
            shard += 1
        budget -= int(purged)
    done = shard >= len(plan.shards) or plan.cutoff_ms <= 0
    progress.position = None if done else Position(shard)
    return progress


async def purge(store: Store, plan: PurgePlan, *, regions: Regions | None = None) -> int:
    """Delete the entries of the plan with their records, in every shard, page by page.

    It removes exactly the entries ``purge_facts`` counted, less any replayed meanwhile.
    """
    total = Progress()
    while total.position is not None:
        total.add(await purge_step(store, plan, total.position, regions=regions))
    return total.changed


@dataclass(frozen=True, slots=True)
class PurgeFacts:
    """What a purge deletes, and what the retention floor (``dlq.retention_s``) keeps: the
    facts of the API's 409 and of its answers, and of ``Client.purge_dlq``'s."""

    plan: PurgePlan
    older_than_s: float
    retention_s: float
    would_purge: int  # entries older than both ages
    within_retention: int  # entries younger than the retention, which no purge deletes

    def refusal(self) -> ConfirmationRequired:
        """The unconfirmed purge's error, with the facts in its sentence and fields."""
        age = _age(max(self.older_than_s, self.retention_s))
        return ConfirmationRequired(
            f"purging deletes {_entries(self.would_purge)} older than {age}; dlq.retention_s "
            f"({_age(self.retention_s)}) protects {_entries(self.within_retention, 'younger ')}"
            "; repeat with confirm=true",
            would_purge=self.would_purge,
            retention_s=_number(self.retention_s),
            within_retention=self.within_retention,
        )

    def answer(self, purged: int) -> dict[str, Any]:
        """The confirmed purge's answer (its first page's, when the API goes on in the
        background)."""
        return {
            "purged": purged,
            "retention_s": _number(self.retention_s),
            "within_retention": self.within_retention,
        }


async def purge_facts(
    store: Store,
    *,
    older_than_s: float,
    retention_s: float,
    regions: Regions | None = None,
    scope: Sequence[str] | None = None,
) -> PurgeFacts:
    """Count what a purge of entries older than both ages deletes, and the entries younger
    than the retention, by entry id (no record read): the entries before the retention's
    cutoff are counted (``purge_left``; once when ``older_than_s`` is not above the
    retention), the younger ones are the rest of ``XLEN``. In the regions of ``scope``
    (None: the store's own Redis), summed."""
    plan = await plan_purge(
        store, older_than_s=older_than_s, retention_s=retention_s, regions=regions, scope=scope
    )
    would_purge = await purge_left(store, plan, Position(), regions=regions)
    floor_ms = plan.cutoff_ms + int(max(older_than_s, retention_s) * 1000)
    floor_ms -= int(retention_s * 1000)  # the retention's own cutoff, from the same now
    if floor_ms == plan.cutoff_ms:
        before_floor = would_purge
    else:
        floor = PurgePlan(plan.shards, floor_ms, plan.regions)
        before_floor = await purge_left(store, floor, Position(), regions=regions)
    size = 0
    for where, _name, remote in await _places(store, regions, scope):
        with reaching(remote):
            size += await dlq_size(where)
    return PurgeFacts(
        plan,
        older_than_s,
        retention_s,
        would_purge,
        max(size - before_floor, 0),  # entries added meanwhile are young: they count here
    )


def _entries(count: int, kind: str = "") -> str:
    return f"{count} {kind}DLQ {'entry' if count == 1 else 'entries'}"


def _age(seconds: float) -> str:
    """``604800`` as ``7 days``, ``3600`` as ``1 hour``, ``90`` as ``90 s``."""
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} s"


def _number(seconds: float) -> float:
    """Whole seconds as an int, so JSON shows ``604800`` rather than ``604800.0``."""
    return int(seconds) if float(seconds).is_integer() else seconds


def replay_answer(progress: Progress) -> dict[str, Any]:
    """The answer of a replay of everything matching (the API's, ``Client.replay_matching``'s):
    ``{"replayed", "skipped", "skipped_reasons"}``."""
    return {
        "replayed": progress.changed,
        "skipped": sum(progress.skipped.values()),
        "skipped_reasons": dict(sorted(progress.skipped.items())),
    }
