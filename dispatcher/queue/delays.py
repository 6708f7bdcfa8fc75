"""The delayed zset: promote due jobs into the ready stream, and sweep expired records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.queue.store import Store

#: Jobs one promote or sweep call handles at most; a full batch means more may be waiting.
BATCH_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Promotion:
    moved: int
    server_ms: int
    orphans: list[str]


async def promote_due(store: Store, queue: str, *, limit: int = BATCH_LIMIT) -> Promotion:
    keys = store.keys
    moved, server_ms, orphans = await store.scripts.promote(
        keys=[keys.delayed(queue), keys.ready(queue), keys.jobs], args=[limit]
    )
    return Promotion(int(moved), int(server_ms), [o.decode() for o in orphans])


async def sweep_finished(store: Store, *, cutoff_ms: int, limit: int = BATCH_LIMIT) -> int:
    """Forget records finished at or before ``cutoff_ms``; returns how many went."""
    removed: int = await store.scripts.sweep(
        keys=[store.keys.done, store.keys.jobs], args=[cutoff_ms, limit]
    )
    return removed
