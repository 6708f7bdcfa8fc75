"""A real ``dispatcher run`` with its admin API: backlog alerts, and /readyz across an outage."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.helpers import (
    Daemon,
    RedisServer,
    daemon_env,
    eventually,
    free_port,
    short_waits,
    stop_daemons,
)
from tests.helpers import log_events as events
from tests.target import Reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from dispatcher import Client
    from tests.target import Target

TOKEN = "operations-token"  # noqa: S105 - a test token


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _admin_env(redis_url: str, prefix: str, **settings: str) -> tuple[dict[str, str], str]:
    port = free_port()
    env = daemon_env(
        redis_url, prefix, admin_listen=f"127.0.0.1:{port}", admin_token=TOKEN, **settings
    )
    return env, f"http://127.0.0.1:{port}"


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            body = await answer.json() if answer.content_type == "application/json" else None
            return answer.status, body if body is not None else await answer.text()
    except aiohttp.ClientConnectionError:
        return 0, None  # not listening yet


async def _alert_names(http: aiohttp.ClientSession, base: str) -> list[str]:
    status, body = await _get(http, f"{base}/v1/status")
    assert status == 200, body
    return sorted(alert["name"] for alert in body["alerts"])


async def _state_is(client: Client, job_ids: list[str], state: str) -> bool:
    jobs = [await client.get_job(job_id) for job_id in job_ids]
    return all(job is not None and job["state"] == state for job in jobs)


async def test_backlog_alerts_are_raised_shown_exported_and_cleared(
    client: Client,
    redis_url: str,
    prefix: str,
    target: Target,
    logs_dir: Path,
    http: aiohttp.ClientSession,
) -> None:
    """A paused queue's backlog raises queued_max and oldest_ready_age_s (log, status, metrics)
    until it drains; dead-lettered jobs raise dlq_growth."""
    env, base = _admin_env(
        redis_url,
        prefix,
        alerts_queued_max="3",
        alerts_oldest_ready_age_s="1",
        alerts_dlq_growth="2",
        delivery_max_attempts="1",
    )
    env |= short_waits({"daemon.ALERT_INTERVAL_S": 0.2})  # 5 s in production: three rounds
    target.script("/dead", Reply(500))
    await client.create_webhook("acme", target.url("/ok"))
    await client.create_webhook("doomed", target.url("/dead"))
    await client.pause("default")
    daemon = Daemon(env, logs_dir / "alerts.log").start()
    try:
        # The worker's first heartbeat comes after its first read of the paused queues.
        await eventually(lambda: _has_worker(http, base), timeout_s=20)
        waiting = [
            (await client.publish("acme", "a.b", {"n": n}))["jobs"][0]["id"] for n in range(5)
        ]
        raised = await eventually(
            lambda: len(events(daemon, "alert.raised")) == 2 and events(daemon, "alert.raised"),
            timeout_s=30,
        )
        assert {(e["name"], e["threshold"]) for e in raised} == {
            ("queued_max", 3),
            ("oldest_ready_age_s", 1.0),
        }
        assert next(e for e in raised if e["name"] == "queued_max")["value"] >= 3
        assert next(e for e in raised if e["name"] == "oldest_ready_age_s")["queue"] == "default"
        shown, queued = await eventually(lambda: _alerts_once_all_counted(http, base), timeout_s=15)
        assert set(shown) == {"queued_max", "oldest_ready_age_s"}
        assert queued >= 4
        assert shown["queued_max"]["threshold"] == 3
        assert shown["oldest_ready_age_s"]["value"] >= 1
        assert shown["queued_max"]["since"].endswith("Z")
        _, metrics = await _get(http, f"{base}/metrics")
        assert 'dispatcher_alert_active{name="queued_max"} 1' in metrics
        assert 'dispatcher_alert_active{name="dlq_growth"} 0' in metrics
        assert f"dispatcher_queued_jobs {queued}" in metrics

        await client.resume("default")
        await eventually(lambda: _state_is(client, waiting, "delivered"), timeout_s=15)
        cleared = await eventually(
            lambda: len(events(daemon, "alert.cleared")) == 2 and events(daemon, "alert.cleared"),
            timeout_s=30,
        )
        assert {e["name"] for e in cleared} == {"queued_max", "oldest_ready_age_s"}
        assert await _alert_names(http, base) == []

        doomed = [(await client.publish("doomed", "a.b", {}))["jobs"][0]["id"] for _ in range(2)]
        await eventually(lambda: _state_is(client, doomed, "dead"), timeout_s=15)
        await eventually(lambda: _alert_names_are(http, base, ["dlq_growth"]), timeout_s=30)
        [growth] = [e for e in events(daemon, "alert.raised") if e["name"] == "dlq_growth"]
        assert (growth["value"], growth["threshold"]) == (2, 2)
    finally:
        await stop_daemons(daemon)


async def _alerts_once_all_counted(
    http: aiohttp.ClientSession, base: str
) -> tuple[dict[str, Any], int] | None:
    """The alerts of /v1/status by name and the queued count, once the last check agrees with
    the status on how many jobs are queued (a read begun before the pause may claim one)."""
    status, body = await _get(http, f"{base}/v1/status")
    assert status == 200, body
    shown = {alert["name"]: alert for alert in body["alerts"]}
    agree = shown.get("queued_max", {}).get("value") == body["queued"]
    return (shown, body["queued"]) if agree else None


async def _has_worker(http: aiohttp.ClientSession, base: str) -> bool:
    status, body = await _get(http, f"{base}/v1/status")
    return status == 200 and bool(body["workers"])


async def _alert_names_are(http: aiohttp.ClientSession, base: str, names: list[str]) -> bool:
    return await _alert_names(http, base) == names


@pytest.mark.slow
async def test_readyz_answers_503_while_redis_is_down_and_200_after(
    tmp_path: Path, logs_dir: Path, http: aiohttp.ClientSession
) -> None:
    """/readyz of a running daemon follows its Redis: 200, 503 while stopped, 200 once back."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    env, base = _admin_env(server.url, "ready")
    daemon = Daemon(env, logs_dir / "readyz.log").start()
    try:
        ready = await eventually(lambda: _ready_status(http, base, 200), timeout_s=20)
        assert ready == {"status": "ready"}
        server.stop(signal.SIGTERM)
        down = await eventually(lambda: _ready_status(http, base, 503), timeout_s=15)
        assert down["error"]["code"] == "redis_unavailable"
        health, _ = await _get(http, f"{base}/healthz")
        assert health == 200, "the process itself stays healthy"
        server.start()
        await eventually(lambda: _ready_status(http, base, 200), timeout_s=20)
        assert daemon.process is not None
        assert daemon.process.poll() is None, "the daemon rode out the outage"
        assert events(daemon, "redis.unavailable")
        await eventually(lambda: events(daemon, "redis.recovered"), timeout_s=20)
    finally:
        await stop_daemons(daemon)
        server.stop()


async def _ready_status(http: aiohttp.ClientSession, base: str, expected: int) -> Any:
    status, body = await _get(http, f"{base}/readyz")
    return body if status == expected else None
