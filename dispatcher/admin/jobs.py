"""``GET /v1/jobs/{id}``: the job's state, timestamps, last error and attempt history;
``POST /v1/jobs/{id}/retry``: send it again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.admin.shared import CLIENT, json_response
from dispatcher.errors import NotFound

if TYPE_CHECKING:
    from aiohttp import web


async def get(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    job = await request.app[CLIENT].get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return json_response(job)


async def retry(request: web.Request) -> web.Response:
    """202 with the job, queued again (``Client.retry_job``)."""
    return json_response(await request.app[CLIENT].retry_job(request.match_info["id"]), 202)
