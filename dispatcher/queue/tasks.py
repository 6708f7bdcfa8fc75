"""Task jobs in Redis: the registry the daemons write, enqueueing a run, the periodic tick,
and each task's last run.

Every task key and task job lives in shard 0 (keys.py). A task job is stored as a delivery
is (codec.py), with ``TASK_WEBHOOK`` as its webhook id, an empty tenant, the task's name as
its event type and its JSON arguments as its payload, so claim, settle, reclaim, promote, the
orphan sweep and the DLQ treat it as any job (task_enqueue.lua). With regions its id ends in
``~<region>`` of this Redis, as every job minted here (ids.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from dispatcher.ids import TASK_QUEUES, TASK_WEBHOOK, new_event_ids
from dispatcher.queue.records import redis_errors

__all__ = ["TASK_WEBHOOK", "Registered", "enqueue", "listing", "record_run", "register", "tick"]

if TYPE_CHECKING:
    from collections.abc import Iterable

    from dispatcher.queue.store import Store

TICK_LIMIT = 100  # periodic runs enqueued per tick at most
REGISTER_EVERY_S = 60.0  # each daemon registers its tasks again this often
#: A task no daemon registered for this long is unknown: a periodic one gets no more runs
#: (task_tick.lua), and enqueueing one is refused (task_enqueue.lua).
REGISTRATION_TTL_MS = 600_000


@dataclass(frozen=True, slots=True)
class Registered:
    """A task as the daemons registered it, with its schedule and its last settled run."""

    name: str
    queue: str
    every_s: float | None
    next_run_ms: int | None
    last_run_ms: int | None
    last_status: str | None


async def register(store: Store, tasks: Iterable[tuple[str, str, float | None]]) -> int:
    """Record ``(name, queue, every_s)`` of each task this daemon runs; schedule the periodic
    ones (their first run is due now unless one is scheduled already)."""
    home = store.home
    args: list[Any] = []
    for name, queue, every_s in tasks:
        spec = orjson.dumps({"q": queue, "every_s": every_s})
        args += [name, spec, int(every_s * 1000) if every_s else 0]
    if not args:
        return 0
    recorded: int = await home.scripts.task_register(
        keys=[home.keys.tasks, home.keys.tasks_due], args=args
    )
    return recorded


def _queue_keys(store: Store) -> list[str]:
    keys = store.keys
    return [key for queue in TASK_QUEUES for key in (keys.ready(queue), keys.delayed(queue))]


async def enqueue(
    store: Store, name: str, args: bytes, *, queue: str | None, due_ms: int | None
) -> tuple[str, str] | None:
    """Enqueue one run of ``name``: ``(job id, queue)``, or None when no daemon registered it."""
    home = store.home
    _event_id, prefix = new_event_ids()
    with redis_errors():
        job_id = f"{prefix}1{await _region_suffix(home)}"
        now_ms = (await home.refresh_clock()).now_ms() if due_ms else 0
        done, chosen = await home.scripts.task_enqueue(
            keys=[home.keys.tasks, home.keys.jobs, *_queue_keys(home), home.keys.tasks_last],
            args=[job_id, name, queue or "", now_ms, due_ms or 0, args, REGISTRATION_TTL_MS],
        )
    if not done:
        return None
    return job_id, chosen.decode()


async def tick(store: Store) -> tuple[list[tuple[str, str]], list[str]]:
    """Enqueue the periodic runs that are due: ``[(name, job id)]``, and the names whose
    period passed without a run because their last run is unfinished (runs never overlap)."""
    home = store.home
    _event_id, prefix = new_event_ids()
    keys = home.keys
    flat, skipped = await home.scripts.task_tick(
        keys=[
            keys.tasks,
            keys.tasks_due,
            keys.jobs,
            keys.tasks_last,
            *(keys.ready(q) for q in TASK_QUEUES),
        ],
        args=[prefix, TICK_LIMIT, REGISTRATION_TTL_MS, await _region_suffix(home)],
    )
    runs = [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]
    return runs, [name.decode() for name in skipped]


async def _region_suffix(store: Store) -> str:
    """What ends a job id minted in ``store``'s Redis: ``~<region>``, or '' without regions
    (the layout is cached: a read every few seconds at most)."""
    region = (await store.read_layout()).region
    return f"~{region}" if region else ""


async def record_run(store: Store, name: str, at_ms: int, status: str) -> None:
    """Note a task's last settled run (shown by ``GET /v1/tasks``)."""
    home = store.home
    await home.redis.hset(home.keys.tasks_runs, name, orjson.dumps({"at": at_ms, "status": status}))


async def listing(store: Store) -> list[Registered]:
    """Every registered task, by name."""
    home = store.home
    keys = home.keys
    with redis_errors():
        pipe = home.redis.pipeline(transaction=False)
        pipe.hgetall(keys.tasks)
        pipe.zrange(keys.tasks_due, 0, -1, withscores=True)
        pipe.hgetall(keys.tasks_runs)
        specs, due, runs = await pipe.execute()
    next_runs = {name.decode(): int(score) for name, score in due}
    found = []
    for raw_name, raw_spec in sorted(specs.items()):
        name = raw_name.decode()
        spec = _json(raw_spec)
        run = _json(runs.get(raw_name))
        every = spec.get("every_s")
        found.append(
            Registered(
                name=name,
                queue=str(spec.get("q", "maintenance")),
                every_s=float(every) if isinstance(every, int | float) else None,
                next_run_ms=next_runs.get(name),
                last_run_ms=run.get("at") if isinstance(run.get("at"), int) else None,
                last_status=run.get("status") if isinstance(run.get("status"), str) else None,
            )
        )
    return found


def _json(raw: bytes | None) -> dict[str, Any]:
    try:
        value = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
