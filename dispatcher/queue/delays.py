"""The delayed zset and the jobs hash: promote due jobs into the ready stream, sweep expired
records, and find jobs whose stream entry was deleted under us."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dispatcher.queue.keys import GROUP

if TYPE_CHECKING:
    from dispatcher.queue.store import Store

#: Jobs one promote or sweep call handles at most; a full batch means more may be waiting.
BATCH_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Promotion:
    moved: int
    server_ms: int
    orphans: list[str]  # due, but their record was gone (finished and swept, or deleted)
    malformed: list[str]  # their record could not be read: dead-lettered as malformed


async def promote_due(store: Store, queue: str, *, limit: int = BATCH_LIMIT) -> Promotion:
    keys = store.keys
    moved, server_ms, orphans, malformed = await store.scripts.promote(
        keys=[keys.delayed(queue), keys.ready(queue), keys.jobs, keys.dlq], args=[limit]
    )
    return Promotion(
        int(moved),
        int(server_ms),
        [o.decode() for o in orphans],
        [m.decode() for m in malformed],
    )


@dataclass(frozen=True, slots=True)
class Orphans:
    cursor: str
    requeued: list[str]
    dead: list[str]


async def find_orphans(store: Store, *, cursor: str, count: int) -> Orphans:
    """One page of the jobs hash checked for jobs whose stream entry is gone (orphans.lua)."""
    keys = store.keys
    next_cursor, requeued, dead = await store.scripts.orphans(
        keys=[keys.jobs, keys.dlq], args=[cursor, count, keys.base, GROUP, store.clock.now_ms()]
    )
    return Orphans(next_cursor.decode(), [j.decode() for j in requeued], [j.decode() for j in dead])


async def sweep_finished(store: Store, *, cutoff_ms: int, limit: int = BATCH_LIMIT) -> int:
    """Forget records finished at or before ``cutoff_ms``; returns how many went."""
    removed: int = await store.scripts.sweep(
        keys=[store.keys.done, store.keys.jobs], args=[cutoff_ms, limit]
    )
    return removed
