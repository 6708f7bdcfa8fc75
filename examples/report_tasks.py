"""examples/report_tasks.py: tasks of your own, run by every daemon whose tasks.modules names
this module (tasks.modules = ["examples.report_tasks"])."""

from __future__ import annotations

import structlog

from dispatcher import TaskContext, task

log = structlog.get_logger()


@task(name="reports.daily", queue="analytics")
async def daily_report(ctx: TaskContext, *, tenant: str, day: str) -> None:
    """One tenant's report for one day: called with the JSON args it was enqueued with."""
    status = await ctx.client.status()  # the Client, straight on Redis
    log.info("report.written", tenant=tenant, day=day, dlq_size=status["dlq_size"])


@task(name="reports.cleanup", every_s=3600, timeout_s=60)
async def cleanup(ctx: TaskContext) -> None:
    """Periodic: one run an hour across every daemon. Raising retries it with backoff."""
    log.info("reports.cleaned", job_id=ctx.job_id, attempt=ctx.attempt)
