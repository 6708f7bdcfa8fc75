"""The Lua scripts of ``queue/lua``, loaded as package data and registered once per client.

redis-py's ``Script`` runs EVALSHA and reloads the script on NOSCRIPT (a Redis restart or
``SCRIPT FLUSH``), so callers never see that error.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript


_INCLUDE = "-- include: "  # a line that stands for a shared file of lua/, e.g. _record.lua


def _read(file: str) -> str:
    return resources.files("dispatcher.queue").joinpath("lua", file).read_text("utf-8")


def _source(name: str, seen: set[str] | None = None) -> str:
    """The script's text, each ``-- include: <file>`` line replaced by that file's text (EVALSHA
    runs one text: scripts cannot share a Lua file otherwise). An included file may include
    another; each goes in once, where it is first named."""
    seen = set() if seen is None else seen
    parts = []
    for line in _read(f"{name}.lua").splitlines(keepends=True):
        if not line.startswith(_INCLUDE):
            parts.append(line)
            continue
        file = line.removeprefix(_INCLUDE).strip()
        if file not in seen:
            seen.add(file)
            parts.append(_source(file.removesuffix(".lua"), seen))
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class Scripts:
    publish: AsyncScript
    claim: AsyncScript
    settle: AsyncScript
    reclaim: AsyncScript
    promote: AsyncScript
    sweep: AsyncScript
    quarantine: AsyncScript
    replay: AsyncScript
    purge: AsyncScript
    admit: AsyncScript
    lease: AsyncScript
    waiting_tick: AsyncScript
    pause_release: AsyncScript
    breaker_report: AsyncScript
    breaker_tick: AsyncScript
    breaker_probe: AsyncScript
    orphans: AsyncScript
    dlq_page: AsyncScript
    dlq_count: AsyncScript
    change_webhook: AsyncScript
    delete_webhook: AsyncScript
    adopt_layout: AsyncScript
    index_queues: AsyncScript
    stats_add: AsyncScript
    stats_roll: AsyncScript
    stats_read: AsyncScript
    task_register: AsyncScript
    task_enqueue: AsyncScript
    task_tick: AsyncScript
    retry_job: AsyncScript
    recent_jobs: AsyncScript
    relay_apply: AsyncScript
    outbox_ack: AsyncScript
    outbox_read: AsyncScript
    registry_apply: AsyncScript
    raise_served: AsyncScript
    registry_lease: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        """Every script, one a field named for its ``lua/<name>.lua`` file."""
        return cls(**{f.name: redis.register_script(_source(f.name)) for f in fields(cls)})
