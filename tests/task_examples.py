"""Tasks for the tests (tests/test_tasks.py), registered by daemons started with
``tasks.modules = ["tests.task_examples"]``. They write what they did to files the test names
(their arguments, or ``TASK_TEST_DIR`` for the periodic one), since they run in the daemon."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from dispatcher import TaskContext, task


def _note(path: str | Path, **line: object) -> None:
    with Path(path).open("a") as file:  # one short append per line: lines never interleave
        file.write(json.dumps(line) + "\n")


@task(name="tests.record", queue="analytics")
async def record(ctx: TaskContext, *, path: str, value: object) -> None:
    """Write its arguments down."""
    _note(path, job_id=ctx.job_id, attempt=ctx.attempt, value=value)


@task(name="tests.flaky", max_attempts=3)
async def flaky(ctx: TaskContext, *, path: str) -> None:
    """Fail until the file ``path`` exists."""
    if not Path(path).exists():  # noqa: ASYNC240 - a test's marker file
        msg = f"no {Path(path).name} yet (attempt {ctx.attempt})"
        raise RuntimeError(msg)


@task(name="tests.tick", every_s=1, timeout_s=60)
async def tick(ctx: TaskContext) -> None:
    """Periodic: note each run in TASK_TEST_DIR/runs; the first run to find TASK_TEST_DIR/hang
    hangs (so the test can kill its daemon mid-run), later ones end at once."""
    directory = os.environ.get("TASK_TEST_DIR")
    if not directory:
        return
    runs = Path(directory) / "runs"
    _note(runs, job_id=ctx.job_id, pid=os.getpid(), event="start")
    if (Path(directory) / "hang").exists():
        try:
            os.close(os.open(Path(directory) / "hung", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            _note(runs, job_id=ctx.job_id, pid=os.getpid(), event="hang")
            await asyncio.sleep(60)
    _note(runs, job_id=ctx.job_id, pid=os.getpid(), event="done")


@task(name="tests.slow")
async def slow(ctx: TaskContext, *, path: str, seconds: float) -> None:
    """Note its start, take ``seconds``, note its end."""
    _note(path, job_id=ctx.job_id, event="start")
    await asyncio.sleep(seconds)
    _note(path, job_id=ctx.job_id, event="done")


@task(name="tests.escapes", max_attempts=1)
async def escapes(ctx: TaskContext, *, kind: str) -> None:
    """Raise what an ``except Exception`` misses: SystemExit (a library's sys.exit) or a
    CancelledError of its own (a cancelled future it awaited)."""
    if kind == "exit":
        raise SystemExit(3)
    raise asyncio.CancelledError
