"""A real ``dispatcher run`` with ``delivery.http_client = "aiohttp"`` delivers, signed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from standardwebhooks.webhooks import Webhook as Verifier

from tests.helpers import Daemon, daemon_env, eventually, stop_daemons

if TYPE_CHECKING:
    from pathlib import Path

    from dispatcher import Client
    from tests.target import Target


async def test_daemon_with_the_aiohttp_client_delivers_signed(
    client: Client, redis_url: str, prefix: str, target: Target, logs_dir: Path
) -> None:
    """With DISPATCHER_DELIVERY_HTTP_CLIENT=aiohttp a published event arrives, validly signed."""
    hook = await client.create_webhook("t", target.url("/hook"))
    env = daemon_env(redis_url, prefix, delivery_http_client="aiohttp")
    daemon = Daemon(env, logs_dir / "aiohttp.log").start()
    try:
        answer = await client.publish("t", "order.created", {"n": 1})
        [job] = answer["jobs"]
        [request] = await target.wait_for(1, "/hook", timeout_s=20)
        await eventually(
            lambda: _state_is(client, job["id"], "delivered"), timeout_s=20, what="delivered"
        )
    finally:
        await stop_daemons(daemon)
    assert request.headers["webhook-id"] == job["id"]
    assert request.headers["accept-encoding"] == "identity"
    Verifier(hook["secret"]).verify(request.body, dict(request.headers))
    assert '"http_client":"aiohttp"' in daemon.log  # the daemon.started line


async def _state_is(client: Client, job_id: str, state: str) -> bool:
    job = await client.get_job(job_id)
    return job is not None and job["state"] == state
