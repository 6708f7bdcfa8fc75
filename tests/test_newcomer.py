"""A newcomer's first mistakes get an answer that says how to fix them (issue 15)."""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dispatcher import InvalidField
from dispatcher.queue.urls import absolute_unix
from tests.admin_api import TOKEN, start_api
from tests.helpers import Daemon, daemon_env

if TYPE_CHECKING:
    from dispatcher import Client


async def test_a_refused_token_says_what_was_wrong_with_it(client: Client) -> None:
    """A 401 says whether the header was missing, empty (an unset shell variable), of another
    scheme or simply wrong, and never repeats what was sent."""
    _app, api = await start_api(client)
    cases = {
        None: "no Authorization header",
        "Bearer ": "the bearer token is empty",
        "Bearer": "the bearer token is empty",
        "Basic dXNlcjpwYXNz": "must be 'Bearer <token>'",
        TOKEN: "must be 'Bearer <token>'",  # the token alone, without its scheme
        "Bearer not-the-token-42": "is not the configured admin token",
    }
    try:
        for header, why in cases.items():
            headers = {} if header is None else {"Authorization": header}
            answer = await api.call("GET", "/v1/status", token=False, headers=headers)
            assert answer.status == 401, header
            message = answer.body["error"]["message"]
            assert why in message, (header, message)
            for sent in ("not-the-token-42", "dXNlcjpwYXNz", TOKEN, TOKEN[:8]):
                assert sent not in message, (header, message)
        assert (await api.call("GET", "/v1/status")).status == 200
    finally:
        await api.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("unix://var/redis.sock", "unix://{cwd}/var/redis.sock"),
        ("unix://var/redis.sock?db=2", "unix://{cwd}/var/redis.sock?db=2"),
        ("unix://:secret@var/redis.sock", "unix://:secret@{cwd}/var/redis.sock"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("unix://user:pw@/run/redis.sock", "unix://user:pw@/run/redis.sock"),
        ("unix://localhost/run/redis.sock", "unix://localhost/run/redis.sock"),
        ("redis://var:6379/0", "redis://var:6379/0"),
    ],
)
def test_a_relative_socket_path_is_read_from_the_working_directory(url: str, expected: str) -> None:
    """``unix://var/redis.sock`` names ``./var/redis.sock``, not a host ``var``; absolute and
    host-style forms and other schemes are left alone (tests/test_readme.py runs the tour,
    which connects with the relative form)."""
    assert absolute_unix(url) == expected.format(cwd=Path.cwd())


async def test_a_time_without_a_zone_is_refused_with_the_fix(client: Client) -> None:
    """A naive ``deliver_at`` (Python or HTTP) is a 422 that shows the aware form to use."""
    hook = await client.create_webhook("t-naive", "https://example.com/h")
    with pytest.raises(InvalidField) as raised:
        await client.publish("t-naive", "e", {}, deliver_at=datetime(2030, 1, 1, 9))  # noqa: DTZ001
    assert raised.value.field == "deliver_at"
    assert "tzinfo=timezone.utc" in str(raised.value)
    _app, api = await start_api(client)
    try:
        answer = await api.call(
            "POST",
            "/v1/events",
            json={
                "tenant_id": "t-naive",
                "event_type": "e",
                "payload": {},
                "deliver_at": "2030-01-01T09:00:00",
            },
        )
        assert answer.status == 422
        assert answer.body["error"]["message"].startswith("deliver_at: has no time zone")
        assert '"2030-01-01T09:00:00Z"' in answer.body["error"]["message"]
    finally:
        await api.close()
    status = await client.status()
    assert (status["queued"], status["scheduled"]) == (0, 0), "a refused publish enqueued"
    assert hook["enabled"]


async def test_a_busy_admin_port_is_one_clear_line_and_exit_2(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """A second daemon on a port already taken says which key to change, without a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = daemon_env(redis_url, prefix, admin_listen=f"127.0.0.1:{port}", admin_token="t")  # noqa: S106
        daemon = Daemon(env, tmp_path / "busy.log").start()
        try:
            assert await asyncio.to_thread(daemon.wait, 60) == 2
        finally:
            daemon.stop()
    failed = [line for line in daemon.log.splitlines() if "daemon.start_failed" in line]
    assert len(failed) == 1, daemon.log
    assert f"cannot listen on 127.0.0.1:{port}" in failed[0]
    assert "DISPATCHER_ADMIN_LISTEN" in failed[0]
    assert "Traceback" not in daemon.log
