"""SIGHUP on a real ``dispatcher run``: live keys applied, restart keys named, bad files refused."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

from tests.helpers import Daemon, daemon_env, eventually
from tests.helpers import log_events as events
from tests.target import Reply

if TYPE_CHECKING:
    from pathlib import Path

    from dispatcher import Client, shapes
    from tests.target import Target

CONFIG = """
[delivery]
timeout_s = {timeout_s}
stall_timeout_s = 5
backoff_base_s = 0.05
backoff_cap_s = 0.1
max_attempts = {max_attempts}
[log]
level = "{level}"
"""


async def _finished(client: Client, job_id: str, state: str) -> shapes.Job | None:
    job = await client.get_job(job_id)
    return job if job and job["state"] == state else None


async def test_sighup_applies_live_keys_names_restart_keys_and_refuses_a_broken_file(
    client: Client, redis_url: str, prefix: str, target: Target, tmp_path: Path, logs_dir: Path
) -> None:
    """A reload changes the log level and max_attempts at once, names timeout_s as needing a
    restart (not the --queues override), and a broken file is refused with the daemon going on."""
    path = tmp_path / "dispatcher.toml"
    path.write_text(CONFIG.format(timeout_s=2, max_attempts=2, level="info"))
    env = daemon_env(redis_url, prefix)
    del env["DISPATCHER_LOG_LEVEL"]  # the file decides the level here
    target.script("/fail", Reply(500))
    await client.create_webhook("ok", target.url("/ok"))
    await client.create_webhook("fail", target.url("/fail"))
    args = ("--config", str(path), "--queues", "default,other")
    daemon = Daemon(env, logs_dir / "reload.log", args=args).start()
    try:
        await eventually(lambda: events(daemon, "daemon.started"), timeout_s=20)
        quiet = (await client.publish("ok", "a.b", {}))["jobs"][0]["id"]
        await eventually(lambda: _finished(client, quiet, "delivered"))
        assert events(daemon, "delivery.succeeded") == []  # debug lines are off at info
        before = (await client.publish("fail", "a.b", {}))["jobs"][0]["id"]
        assert (await eventually(lambda: _finished(client, before, "dead")))["attempt"] == 2

        path.write_text(CONFIG.format(timeout_s=3, max_attempts=4, level="debug"))
        daemon.signal(signal.SIGHUP)
        [reloaded] = await eventually(lambda: events(daemon, "config.reloaded"))
        assert reloaded["applied"] == ["delivery.max_attempts", "log.level"]
        [restart] = events(daemon, "config.reload_needs_restart")
        assert restart["keys"] == ["delivery.timeout_s"]

        loud = (await client.publish("ok", "a.b", {}))["jobs"][0]["id"]
        await eventually(lambda: _finished(client, loud, "delivered"))
        assert [e["job_id"] for e in events(daemon, "delivery.succeeded")] == [loud]
        after = (await client.publish("fail", "a.b", {}))["jobs"][0]["id"]
        assert (await eventually(lambda: _finished(client, after, "dead")))["attempt"] == 4

        path.write_text('[delivery]\ntimeout_s = "soon"\nmax_atempts = 3\n')
        daemon.signal(signal.SIGHUP)
        await eventually(lambda: events(daemon, "config.unchanged"))
        problems = [e["problem"] for e in events(daemon, "config.reload_refused")]
        assert len(problems) == 2, problems
        assert any(p.startswith("delivery.max_atempts: unknown key") for p in problems)
        assert any(p.startswith("delivery.timeout_s:") and '"soon"' in p for p in problems)
        assert len(events(daemon, "config.reloaded")) == 1
        assert daemon.process is not None
        assert daemon.process.poll() is None, "a broken file does not stop the daemon"
        still = (await client.publish("ok", "a.b", {}))["jobs"][0]["id"]
        await eventually(lambda: _finished(client, still, "delivered"))

        daemon.signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 20) == 0
    finally:
        daemon.stop()
