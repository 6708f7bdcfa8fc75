"""The built-in tasks (tasks.py): the upkeep that needs no low latency, run once per period
across every daemon rather than by each one.

- ``dispatcher.sweep_finished``: forget delivered (and finished) job records past
  ``jobs.retention_s``, on every shard;
- ``dispatcher.forget_silent_workers``: drop the heartbeats of workers silent for long;
- ``dispatcher.purge_dlq``: delete DLQ entries past ``dlq.retention_s``, only when
  ``dlq.auto_purge = true`` (by default purges are an operator's, confirmed, decision);
- ``dispatcher.stats_rollup`` (the ``analytics`` queue): roll the per-webhook delivery stats'
  minutes into hours (``queue/stats.py``), which keep the 24 h and 7 d windows.

Idempotency keys, their fingerprints and the per-minute counters need no task: Redis expires
them (each is written with its TTL). Promotion of due jobs and the reclaim of stalled ones
stay loops in every worker (upkeep.py, reclaim.py), since their latency matters.

The analytics queue's built-in tasks register here too, with ``queue="analytics"``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from dispatcher.queue import control, delays, stats
from dispatcher.tasks import task

if TYPE_CHECKING:
    from dispatcher.tasks import TaskContext

log = structlog.get_logger()

SWEEP_EVERY_S = 60.0
FORGET_WORKERS_EVERY_S = 60.0
PURGE_DLQ_EVERY_S = 3600.0
#: One rollup run goes on past ``stats.ROLL_BUDGET`` minutes for at most this long (a backlog
#: of minutes, after the analytics queue was paused or down, is caught up over a few runs).
ROLLUP_RUN_S = 20.0
#: The rollup's own timeout, above ROLLUP_RUN_S (and its last script call), whatever
#: ``delivery.timeout_s`` (15 s by default): a run catching up a backlog ends, not times out.
ROLLUP_TIMEOUT_S = 3 * ROLLUP_RUN_S


@task(name="dispatcher.sweep_finished", every_s=SWEEP_EVERY_S)
async def sweep_finished(ctx: TaskContext) -> None:
    """Forget finished job records past ``jobs.retention_s``, page by page, on every shard."""
    cutoff_ms = ctx.store.clock.now_ms() - int(ctx.config.jobs.retention_s * 1000)
    removed = 0
    for shard in await ctx.store.all_shards():
        while (count := await delays.sweep_finished(shard, cutoff_ms=cutoff_ms)) > 0:
            removed += count
            if count < delays.BATCH_LIMIT:
                break
    if removed:
        log.info("jobs.swept", removed=removed)


@task(name="dispatcher.forget_silent_workers", every_s=FORGET_WORKERS_EVERY_S)
async def forget_silent_workers(ctx: TaskContext) -> None:
    """Drop the heartbeats of workers that stopped beating (killed, or their host gone)."""
    await control.forget_silent_workers(ctx.store)


@task(name="dispatcher.purge_dlq", every_s=PURGE_DLQ_EVERY_S)
async def purge_dlq(ctx: TaskContext) -> None:
    """With ``dlq.auto_purge = true``: delete the DLQ entries older than ``dlq.retention_s``
    (with their records), as a confirmed ``DELETE /v1/dlq`` would. Off, it deletes nothing."""
    if not ctx.config.dlq.auto_purge:
        return
    answer = await ctx.client.purge_dlq(0, confirm=True)
    if answer["purged"]:
        log.info("dlq.auto_purged", purged=answer["purged"], retention_s=answer["retention_s"])


@task(
    name="dispatcher.stats_rollup",
    queue="analytics",
    every_s=stats.ROLLUP_EVERY_S,
    timeout_s=ROLLUP_TIMEOUT_S,
)
async def stats_rollup(ctx: TaskContext) -> None:
    """Roll the per-webhook stats' minutes into hours, a budget of minutes per script call,
    until none is due or ``ROLLUP_RUN_S`` has passed (idempotent: safe to run twice)."""
    ends = time.monotonic() + ROLLUP_RUN_S
    rolled = 0
    while True:
        handled = await stats.rollup(ctx.store, ctx.store.clock.now_ms())
        rolled += handled
        if handled < stats.ROLL_BUDGET or time.monotonic() >= ends:
            break
    if rolled:
        log.debug("stats.rolled", minutes=rolled)
