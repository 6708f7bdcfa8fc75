"""A newcomer's first mistakes get an answer that says how to fix them (issue 15)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from redis.connection import parse_url as untyped_parse_url

from dispatcher import InvalidField, config
from dispatcher.errors import ConfigError
from dispatcher.queue.urls import absolute_unix
from tests.admin_api import TOKEN, start_api
from tests.helpers import Daemon, daemon_env

REPO = Path(__file__).resolve().parent.parent


def parse_url(url: str) -> dict[str, Any]:
    """redis-py's URL reader (untyped there), which the Client's connection pool uses."""
    return untyped_parse_url(url)  # type: ignore[no-untyped-call,no-any-return]

if TYPE_CHECKING:
    from dispatcher import Client


async def test_a_refused_token_says_what_was_wrong_with_it(client: Client) -> None:
    """A 401 says whether the header was missing, empty (an unset shell variable), of another
    scheme or simply wrong, and never repeats what was sent; the right token is accepted
    whatever the case of its scheme."""
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
        for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "):
            answer = await api.call(
                "GET", "/v1/status", token=False, headers={"Authorization": header}
            )
            assert answer.status == 200, header  # the scheme is case-insensitive (RFC 9110)
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


def _run_dev(tmp_path: Path, config_text: str, **env: str) -> tuple[str, str]:
    """``scripts/run-dev`` (what make run runs) with a stand-in ``dispatcher`` that loads the
    config as the daemon would and exits: (the output, the stand-in's verdict)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_in = bin_dir / "dispatcher"
    stand_in.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "from dispatcher import config\n"
        "try:\n"
        "    cfg = config.load(sys.argv[3], os.environ)\n"
        "    print('LOADED', cfg.state_dir, cfg.admin.token)\n"
        "except Exception as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    stand_in.chmod(0o755)
    (tmp_path / "cfg.toml").write_text(config_text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    environ.update(BIN=str(bin_dir), CONFIG="cfg.toml", PYTHONPATH=str(REPO), **env)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run-dev")],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = done.stdout + done.stderr
    verdict = next(
        (line for line in out.splitlines() if line.startswith(("LOADED", "REFUSED"))), ""
    )
    return out, verdict


def _pasted_auth(out: str, cwd: Path) -> str:
    """What the banner's ``export D=... AUTH=...`` line sets AUTH to in a new shell."""
    line = next(line[line.index("export D=") :] for line in out.splitlines() if "export D=" in line)
    pasted = subprocess.run(
        ["sh", "-c", f'{line}; printf %s "$AUTH"'],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
    )
    return pasted.stdout


def test_make_run_makes_one_token_and_tells_a_second_shell_how_to_send_it(tmp_path: Path) -> None:
    """With no token set, make run writes one (0600) into the state dir, keeps it across runs,
    and its banner line, pasted into another shell, sends exactly that token; it names the panel."""
    out, verdict = _run_dev(tmp_path, "")
    token_file = tmp_path / "var" / "admin.token"
    token = token_file.read_text().strip()
    assert verdict == f"LOADED var {token}", out
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert _pasted_auth(out, tmp_path) == f"Authorization: Bearer {token}"
    assert "  panel:      http://127.0.0.1:8080/ui/ " in out  # the operator panel's address
    _again, verdict = _run_dev(tmp_path, "")
    assert verdict == f"LOADED var {token}"


@pytest.mark.parametrize(
    "config_text",
    [
        '[admin]\ntoken = "from-the-config-0123"\n',
        'admin.token = "from-the-config-0123"\n',
        '[admin]\n"token" = "from-the-config-0123"\n',
    ],
    ids=["table", "dotted", "quoted"],
)
def test_make_run_keeps_a_token_the_config_sets(tmp_path: Path, config_text: str) -> None:
    """A token the config sets, in any TOML form, is the daemon's; make run adds no other."""
    out, verdict = _run_dev(tmp_path, config_text)
    assert verdict == "LOADED var from-the-config-0123", out
    assert not (tmp_path / "var" / "admin.token").exists()


def test_make_run_uses_the_state_dir_the_config_names(tmp_path: Path) -> None:
    """The token file goes to the config's state_dir, which the banner names."""
    out, verdict = _run_dev(tmp_path, 'state_dir = "state"\n')
    assert verdict.startswith("LOADED state "), out
    assert "state in state" in out
    assert (tmp_path / "state" / "admin.token").exists()
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("source", ["DISPATCHER_ADMIN_TOKEN_FILE", "DISPATCHER_ADMIN_TOKEN"])
def test_make_runs_banner_sends_a_token_given_in_the_environment(
    tmp_path: Path, source: str
) -> None:
    """A token from the environment (as a file or a value) is what the pasted line sends."""
    token = "env-token-0123456789"  # noqa: S105 - a test token
    token_file = tmp_path / "given.token"
    token_file.write_text(token + "\n")
    value = str(token_file) if source.endswith("_FILE") else token
    out, verdict = _run_dev(tmp_path, "", **{source: value})
    assert verdict == f"LOADED var {token}", out
    if source.endswith("_FILE"):
        assert _pasted_auth(out, tmp_path) == f"Authorization: Bearer {token}"
    else:
        assert "$DISPATCHER_ADMIN_TOKEN" in out
    assert not (tmp_path / "var" / "admin.token").exists()


@pytest.mark.parametrize("directory", ["plain", "a%41b", "c#d", "e?f", "g h"])
def test_a_relative_socket_url_names_the_file_under_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, directory: str
) -> None:
    """``unix://var/redis.sock`` names ``./var/redis.sock`` whatever characters the working
    directory's path holds (redis-py reads the URL's path unquoted)."""
    cwd = tmp_path / directory
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert parse_url(absolute_unix("unix://var/redis.sock"))["path"] == f"{cwd}/var/redis.sock"


@pytest.mark.parametrize(
    "url", ["unix://redis.sock", "unix://var/redis.sock", "unix:///r.sock"]
)
def test_check_config_accepts_the_socket_urls_the_client_opens(url: str) -> None:
    """A unix URL that ``Client.from_url`` opens is one the config accepts, and the reverse."""
    cfg = config.load(None, {"DISPATCHER_REDIS_URL": url})
    assert parse_url(absolute_unix(url))["path"]
    assert cfg.redis.url == url
    with pytest.raises(ConfigError, match="needs a socket path"):
        config.load(None, {"DISPATCHER_REDIS_URL": "unix://"})
    with pytest.raises(ConfigError, match="unsupported scheme"):  # redis-py cannot open it
        config.load(None, {"DISPATCHER_REDIS_URL": "unix:var/redis.sock"})
