"""The webhook registry across regions: reading another region's webhook writes (its
``registry`` stream, or all its records for a resync) and applying them here.

docs/regions.md says what it promises. Every region holds every webhook, so a publish routes
from its own Redis. Each write made in a region gets a version ``(v, origin)`` and an entry on
that region's ``registry`` stream (``queue/webhooks.py``); the other regions apply it when it
beats the version they hold (``registry_apply.lua``: last writer wins, a delete leaves a
tombstone that beats any older write). What a write sets in motion runs only in the
webhook's own region (``webhooks.after_change``). ``dispatcher/replicator.py`` is the loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis.exceptions as rex

from dispatcher.errors import Conflict
from dispatcher.ids import shard_of
from dispatcher.model import Webhook
from dispatcher.queue import webhooks

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from dispatcher.queue.store import Store

#: Entries read from a region's registry stream at a time.
READ_COUNT = 500
#: Records of a region read at a time by a resync (HSCAN COUNT).
SCAN_COUNT = 500
#: How many times a batch reads this Redis's records again when one changed meanwhile.
MAX_APPLY_ATTEMPTS = 16
#: The version of a record written before regions (none in ``versions``): any write beats it.
UNVERSIONED = "0"

#: The local draining mark pause_release.lua keeps at a record's end (model.py writes it last).
_DRAINING = re.compile(rb',"draining":[12]}$')


@dataclass(frozen=True, slots=True)
class Write:
    """One webhook write of another region: ``version`` is ``"<v> <origin>"`` (``" -"``
    appended for a delete), ``record`` the record as stored there (None: deleted)."""

    webhook_id: str
    version: str
    record: bytes | None
    #: An operator enabled it (``fresh = 1`` on the entry): its own region closes its breaker.
    fresh_start: bool = False


@dataclass(slots=True)
class Applied:
    written: int = 0
    superseded: int = 0


def _version_of(fields: dict[bytes, bytes]) -> str:
    version = f"{fields[b'v'].decode()} {fields[b'o'].decode()}"
    return f"{version} -" if b"del" in fields else version


def _write_of(fields: dict[bytes, bytes]) -> Write:
    return Write(fields[b"w"].decode(), _version_of(fields), fields.get(b"rec"), b"fresh" in fields)


async def read(source: Store, cursor: str, *, block_ms: int | None) -> list[tuple[str, Write]]:
    """The entries of ``source``'s (a shard of another region) registry stream after
    ``cursor``: (entry id, write); ``block_ms``: wait that long for one when there is none."""
    found = await cast(
        "Awaitable[list[Any] | None]",
        source.redis.xread({source.keys.registry: cursor}, count=READ_COUNT, block=block_ms),
    )
    if not found:
        return []
    return [(entry_id.decode(), _write_of(fields)) for entry_id, fields in found[0][1]]


def _older(a: str, b: str) -> bool:
    """Stream id ``a`` comes before ``b``."""
    am, _, an = a.partition("-")
    bm, _, bn = b.partition("-")
    return (int(am), int(an or 0)) < (int(bm), int(bn or 0))


async def missed(source: Store, cursor: str) -> bool:
    """Entries after ``cursor`` may be gone from ``source``'s registry stream (trimmed before
    they were applied here), so only a resync can catch up. True also when the entry at the
    cursor itself was trimmed (a region idle past the stream's age): a resync is then
    harmless, only slower."""
    try:
        info = await source.redis.xinfo_stream(source.keys.registry)
    except rex.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return False  # nothing written there since regions (or ever): nothing missed
        raise
    if int(info["entries-added"]) == int(info["length"]):
        return False  # nothing ever trimmed
    first = info.get("first-entry")
    if not first:  # all trimmed: missed if any came after the cursor
        return _older(cursor, _text(info["last-generated-id"]))
    return _older(cursor, _text(first[0]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def last_id(source: Store) -> str:
    """The id of the last entry ever added to ``source``'s registry stream (``0-0``: none)."""
    try:
        info = await source.redis.xinfo_stream(source.keys.registry)
    except rex.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return "0-0"
        raise
    return _text(info["last-generated-id"])


async def lost_here(here: Store, there: Store, home: str) -> str | None:
    """``there``'s cursor on ``here``'s own registry stream (a shard of this region) when it
    is past that stream's last entry: this Redis lost writes ``there`` had applied (a failover
    to a replica that missed them), which only a resync from ``there`` brings back; else None.
    """
    theirs = await cursor_of(there, home)
    if theirs is None:
        return None
    return theirs if _older(await last_id(here), theirs) else None


async def go_on_after(here: Store, entry_id: str) -> None:
    """``here``'s own registry stream goes on after ``entry_id`` (another region's cursor on
    it), so its next entries come after every entry that region read (XSETID; a stream lost
    whole is made anew, empty)."""
    keys = here.keys
    if await last_id(here) == "0-0":  # XADD and its trim in one command: no entry is seen
        await here.redis.xadd(keys.registry, {"w": ""}, maxlen=0, approximate=False)
    if _older(await last_id(here), entry_id):
        redis: Any = here.redis  # redis-py has no XSETID method
        await redis.execute_command("XSETID", keys.registry, entry_id)


async def scan(source: Store, cursor: int) -> tuple[int, list[Write]]:
    """One step of a resync: the webhooks ``source`` (a shard of another region) holds, with
    the deleted ones it remembers (tombstones), from HSCAN ``cursor`` of its ``versions`` then
    (cursor with a ``w`` before it) of its ``webhooks``; the next cursor (0: done).

    Each version is read before its record, so a record is never older than the version sent
    with it (a newer record under an older version is applied again by the entry of its own
    version, which comes after the resync's cursor)."""
    keys = source.keys
    if cursor >= 0:  # versions: every record written since regions, and the tombstones
        after, batch = await cast(
            "Awaitable[tuple[int, dict[bytes, bytes]]]",
            source.redis.hscan(keys.versions, cursor, count=SCAN_COUNT),
        )
        ids = list(batch)
        versions: list[str | None] = [batch[i].decode() for i in ids]
        next_cursor = int(after) or -1
    else:  # then the records: those written before regions have no version
        after, records = await cast(
            "Awaitable[tuple[int, dict[bytes, bytes]]]",
            source.redis.hscan(keys.webhooks, -cursor - 1, count=SCAN_COUNT),
        )
        ids = list(records)
        raw = (
            await cast("Awaitable[list[bytes | None]]", source.redis.hmget(keys.versions, ids))
            if ids
            else []
        )
        versions = [None if v else UNVERSIONED for v in raw]  # versioned: done above
        next_cursor = -int(after) - 1 if int(after) else 0
    writes: list[Write] = []
    if ids:
        records_now = await cast(
            "Awaitable[list[bytes | None]]", source.redis.hmget(keys.webhooks, ids)
        )
        for webhook_id, version, record in zip(ids, versions, records_now, strict=True):
            if version is None:
                continue
            deleted = version.endswith(" -")
            if deleted or record is not None:
                writes.append(Write(webhook_id.decode(), version, None if deleted else record))
            # a version without its record: deleted meanwhile, the stream brings the delete
    return next_cursor, writes


def _as_written_here(
    incoming: bytes, read: bytes | None, source: str, home: str | None
) -> tuple[bytes, Webhook]:
    """The record to write here for another region's ``incoming`` one, ``read`` being this
    Redis's copy: without ``region`` it gets ``source`` (a record from before regions lives in
    its own region's Redis), and it ends with this Redis's draining mark, which is local
    (pause_release.lua): the one here is kept; the webhook's own region starts one when the
    write resumes it, as a PATCH made here would (webhooks.update_webhook)."""
    body = _DRAINING.sub(b"}", incoming)
    hook = Webhook.decode(body)
    if hook.region is None:
        stored = orjson.loads(body)
        stored["region"] = source
        body = orjson.dumps(stored)
        hook.region = source
    kept = _DRAINING.search(read) if read is not None else None
    if kept is not None:
        tail = kept.group()
    elif (
        read is not None and hook.region == home and Webhook.decode(read).paused and not hook.paused
    ):
        tail = b',"draining":1}'
    else:
        tail = b"}"
    return body[:-1] + tail, hook


def _last_writes(writes: list[Write], source: str) -> list[Write]:
    """The last write of each webhook in ``writes``, in their order, fresh when an earlier
    one was (enabled, then changed again), a version from before regions given ``source``."""
    last: dict[str, Write] = {}
    for write in writes:
        before = last.pop(write.webhook_id, None)
        fresh = write.fresh_start or (before is not None and before.fresh_start)
        last[write.webhook_id] = replace(write, fresh_start=fresh)
    return [
        replace(w, version=f"{w.version} {source}") if w.version == UNVERSIONED else w
        for w in last.values()
    ]


async def apply(local: Store, source: str, writes: list[Write], *, cursor: str | None) -> Applied:
    """Apply ``writes`` of region ``source`` (all of one shard) to this Redis, each only when
    it beats the version here, then set the cursor on ``source``'s stream to ``cursor`` (None:
    leave it); run what each applied write sets in motion when the webhook is this region's.
    ``Conflict`` when this Redis's records keep changing meanwhile (the caller tries again)."""
    layout = await local.read_layout()
    pending = _last_writes(writes, source)
    if pending:
        await raise_served(local, shard_of(pending[0].webhook_id) + 1)
    shard = local.of_webhook(pending[0].webhook_id) if pending else local
    keys = shard.keys
    applied = Applied()
    changed: list[tuple[Webhook | None, Webhook | None, bool]] = []
    for _ in range(MAX_APPLY_ATTEMPTS):
        ids = [w.webhook_id for w in pending]
        read: list[bytes | None] = (
            await cast("Awaitable[list[bytes | None]]", shard.redis.hmget(keys.webhooks, ids))
            if ids
            else []
        )
        script_keys = [
            keys.webhooks,
            keys.versions,
            keys.queues,
            keys.queues_indexed,
            keys.registry_from(source),
        ]
        args: list[Any] = [cursor or ""]
        states: list[tuple[Webhook | None, Webhook | None, bool]] = []
        for write, raw in zip(pending, read, strict=True):
            old = Webhook.decode(raw) if raw is not None else None
            old_tenant = keys.tenant(old.tenant_id) if old is not None else keys.webhooks
            if write.record is None:
                new, record, routing, queue, new_tenant = None, b"", b"", "", old_tenant
            else:
                record, new = _as_written_here(write.record, raw, source, layout.region)
                routing, queue, new_tenant = new.routing(), new.queue, keys.tenant(new.tenant_id)
            script_keys += [old_tenant, new_tenant]
            args += [
                write.webhook_id,
                write.version,
                "1" if raw is not None else "0",
                raw or b"",
                record,
                routing,
                queue,
            ]
            states.append((old, new, write.fresh_start))
        done, flags = await shard.scripts.registry_apply(keys=script_keys, args=args)
        for state, flag in zip(states, flags, strict=False):
            if int(flag):
                applied.written += 1
                changed.append(state)
            else:
                applied.superseded += 1
        if int(done) == len(pending):
            break
        pending = pending[int(done) :]
    else:
        raise Conflict(f"the registry of region {source} kept changing here while applied")
    for old, new, fresh_start in changed:
        await webhooks.after_change(local, old, new, changes=None, fresh_start=fresh_start)
    return applied


async def raise_served(store: Store, served: int) -> None:
    """Shards 0..served-1 are served here (``raise_served.lua``; the layout read again)."""
    layout = await store.read_layout()
    if layout.served >= served:
        return
    await store.scripts.raise_served(keys=[store.home.keys.layout], args=[served])
    layout.read_at = float("-inf")
    await store.read_layout()


async def cursor_of(local: Store, source: str) -> str | None:
    """The id of ``source``'s last registry entry applied to this shard (None: resync)."""
    raw = await cast("Awaitable[bytes | None]", local.redis.get(local.keys.registry_from(source)))
    return raw.decode() if raw is not None else None


async def hold_lease(local: Store, source: str, token: str, ttl_ms: int) -> bool:
    """Take or renew this process's lease on replicating ``source`` into this shard."""
    held = await local.scripts.registry_lease(
        keys=[local.keys.registry_lock(source)], args=[token, ttl_ms]
    )
    return bool(held)


async def drop_lease(local: Store, source: str, token: str) -> None:
    """Give up this process's lease on replicating ``source`` into this shard, if it holds it."""
    await local.scripts.registry_lease(keys=[local.keys.registry_lock(source)], args=[token, 0])


async def trim(local: Store, max_age_ms: int) -> None:
    """Drop this shard's own registry entries older than ``max_age_ms`` (Redis clock), but
    never the last one: a region that read up to it reads on after a quiet week (``missed``
    sees its cursor still there) instead of resyncing every record."""
    now_ms = (await local.refresh_clock()).now_ms()
    last = await last_id(local)
    if last == "0-0":
        return  # no stream
    oldest = f"{max(0, now_ms - max_age_ms)}-0"
    minid = oldest if _older(oldest, last) else last
    await local.redis.xtrim(local.keys.registry, minid=minid, approximate=False)
