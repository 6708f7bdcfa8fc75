"""Tasks: named coroutines with JSON arguments, run as jobs on the ``maintenance`` and
``analytics`` queues (the same streams, claims, retries, reclaim and DLQ as deliveries).

A task is registered by decorating a coroutine function in a module that ``tasks.modules``
names (the daemon imports each at start)::

    from dispatcher import task

    @task(name="reports.send", queue="analytics")
    async def send_report(ctx, *, tenant: str) -> None: ...

It is called as ``fn(ctx, **args)``: ``ctx`` is a ``TaskContext`` (the job, its attempt, the
daemon's config and Redis), ``args`` the JSON object it was enqueued with. An exception (or
running past its ``timeout_s``) fails the attempt: it is retried with the deliveries' backoff
and dead-lettered with its error text after ``max_attempts``. ``every_s`` makes it periodic:
one run per period across every daemon (taskrunner.py, queue/tasks.py).

This module only keeps the registry; it talks to nothing.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dispatcher.errors import ConfigError, InvalidField
from dispatcher.ids import TASK_QUEUES

__all__ = ["BUILTIN_MODULES", "REGISTRY", "TASK_QUEUES", "Task", "TaskContext", "task"]

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from dispatcher.client import Client
    from dispatcher.config import Config
    from dispatcher.queue.store import Store

#: The modules of the built-in tasks, registered by every daemon whatever ``tasks.modules``.
BUILTIN_MODULES: Final = ("dispatcher.maintenance",)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a running task is given besides its arguments."""

    job_id: str
    name: str
    attempt: int  # 1 on the first attempt
    config: Config
    client: Client  # the daemon's Client (public API)
    store: Store  # the daemon's Redis (shard 0); for built-in tasks, through dispatcher.queue


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    fn: Callable[..., Awaitable[object]]
    queue: str = "maintenance"
    every_s: float | None = None  # periodic: one run per period across every daemon
    timeout_s: float | None = None  # None: delivery.timeout_s
    max_attempts: int | None = None  # None: delivery.max_attempts


#: name -> task: every decorated function of the modules imported so far
REGISTRY: dict[str, Task] = {}


def check_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidField(
            "name", "must be 1-128 of A-Z, a-z, 0-9, '_', '.', ':' or '-' (a task's name)"
        )
    return value


def check_queue(value: object) -> str:
    if value not in TASK_QUEUES:
        raise InvalidField("queue", f"a task runs on one of {', '.join(TASK_QUEUES)}")
    return str(value)


def task(
    *,
    name: str,
    queue: str = "maintenance",
    every_s: float | None = None,
    timeout_s: float | None = None,
    max_attempts: int | None = None,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Register the decorated coroutine function as the task ``name`` (returned unchanged)."""
    check_name(name)
    check_queue(queue)
    for field, value in (("every_s", every_s), ("timeout_s", timeout_s)):
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise InvalidField(field, "must be a number of seconds above 0, or None")
    if max_attempts is not None and (isinstance(max_attempts, bool) or max_attempts < 1):
        raise InvalidField("max_attempts", "must be a whole number of at least 1, or None")

    def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        known = REGISTRY.get(name)
        if known is not None and known.fn is not fn:
            qualname = f"{known.fn.__module__}.{known.fn.__qualname__}"
            raise InvalidField("name", f"task {name!r} is registered twice (first by {qualname})")
        REGISTRY[name] = Task(name, fn, queue, every_s, timeout_s, max_attempts)
        return fn

    return register


def load_modules(modules: Iterable[str]) -> dict[str, Task]:
    """Import the built-in task modules and ``modules`` (``tasks.modules``); returns the
    registry. An import that fails is a ``ConfigError`` naming the module and why."""
    problems = []
    for module in (*BUILTIN_MODULES, *modules):
        try:
            importlib.import_module(module)
        except Exception as exc:
            problems.append(f"tasks.modules: cannot import {module!r}: {type(exc).__name__}: {exc}")
    if problems:
        raise ConfigError(problems)
    return dict(REGISTRY)
