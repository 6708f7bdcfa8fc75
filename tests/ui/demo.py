"""The panel's world, shared by its browser tests and ``scripts/screenshots``: a local target,
the admin API over urllib, and ``seed``, which fills a daemon's Redis with what each screen
shows (webhooks of two tenants, dead jobs old and young, a scheduled job, past minutes).

Every webhook points at the local target, so nothing a test or the demo replays leaves this
machine.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis

from dispatcher import Client
from dispatcher.queue import control
from tests.helpers import seed_dead_jobs

if TYPE_CHECKING:
    from collections.abc import Callable

    from dispatcher import shapes

#: What a /flaky answer carries until healed: it becomes the job's last_error, which the panel
#: must show as text (an <img> built from it would run the script).
HOSTILE = "<img src=x onerror=alert(1)>"
#: dlq.retention_s by default: purges never delete younger entries.
RETENTION_S = 604_800
#: The past minute ``seed`` writes counters into, and what it writes.
SEEDED_MINUTES_AGO = 30
SEEDED_COUNTS = {"delivered": 17, "failed": 5, "dead": 3, "ms_sum": 17 * 40}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.server.owner.answer(self.path)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: the daemon's log says what each attempt got."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Target


class Target:
    """A stdlib HTTP server on 127.0.0.1 in a thread: ``/ok`` answers 204, ``/fail`` 500
    "boom", ``/gone`` 410, and ``/flaky`` 500 with ``HOSTILE`` until ``heal()``, then 204."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.healed = threading.Event()
        self.received: dict[str, int] = {}

    def start(self) -> Target:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def heal(self) -> None:
        self.healed.set()

    def answer(self, path: str) -> tuple[int, bytes]:
        self.received[path] = self.received.get(path, 0) + 1
        if path == "/fail":
            return 500, b"boom"
        if path == "/gone":
            return 410, b"this endpoint was retired"
        if path == "/flaky" and not self.healed.is_set():
            return 500, HOSTILE.encode()
        return 204, b""


class ApiError(AssertionError):
    """A non-2xx answer of the admin API."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body!r}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class Api:
    """The daemon's admin API at ``base_url``, with the bearer ``token``."""

    base_url: str
    token: str

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, parsed JSON or None)`` of one request, whatever its status."""
        request = urllib.request.Request(  # noqa: S310 - base_url is http://127.0.0.1
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, (json.loads(raw) if raw else None)

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        """The parsed answer of a request that must succeed (2xx), else ``ApiError``."""
        status, answer = self.call(method, path, body)
        if not 200 <= status < 300:
            raise ApiError(status, answer)
        return answer

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as answer:  # noqa: S310
                return bool(answer.status == 200)
        except OSError:
            return False


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (that value); fail with ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s (last: {last!r})")
        time.sleep(0.05)


@dataclass
class Seeded:
    """What ``seed`` made, by role."""

    hooks: dict[str, dict[str, Any]] = field(default_factory=dict)  # ok, fail, flaky, globex
    failed_jobs: list[str] = field(default_factory=list)  # dead after 2 answers "boom"
    flaky_jobs: list[str] = field(default_factory=list)  # dead, their last_error is HOSTILE
    scheduled_job: str = ""  # deliver_at in an hour
    old_dead: list[str] = field(default_factory=list)  # dead-lettered before the retention
    young_dead: list[str] = field(default_factory=list)  # 1,200 recent ones, for paging
    seeded_minute_ms: int = 0  # the start of the minute SEEDED_COUNTS went into


def seed(api: Api, redis_url: str, prefix: str, target: Target, *, demo: bool = False) -> Seeded:
    """Fill the daemon behind ``api`` (on ``redis_url``, keys under ``prefix``, delivering
    with at most 2 attempts) with what the panel shows. With ``demo``: more tenants and
    webhooks, an hour of counters, a tripped breaker and varied dead jobs, for screenshots."""
    seeded = Seeded()
    hook = _hook_maker(api, target)
    seeded.hooks = {
        "ok": hook("acme", "/ok", ["order.created"]),
        "fail": hook("acme", "/fail", ["order.failed"]),
        "flaky": hook("acme", "/flaky", ["order.flaky"]),
        "globex": hook("globex", "/ok", ["*"]),
    }
    if demo:
        seeded.hooks |= {
            "initech": hook("initech", "/ok", ["invoice.paid"]),
            "initech_fail": hook("initech", "/fail", ["invoice.failed"]),
            "initech_gone": hook("initech", "/gone", ["invoice.voided"]),
            "globex_paused": hook("globex", "/ok", ["user.deleted"]),
        }
        api("PATCH", f"/v1/webhooks/{seeded.hooks['globex_paused']['id']}", {"paused": True})
    now = datetime.now(UTC)
    old_ms = int((now - timedelta(seconds=RETENTION_S, days=1)).timestamp() * 1000)
    old_ids = [f"{old_ms + i}-0" for i in range(3)]  # before any real dead-letter: ids grow
    minutes = _demo_minutes(now) if demo else {}
    seeded.seeded_minute_ms = (int(now.timestamp()) // 60 - SEEDED_MINUTES_AGO) * 60_000
    minutes[seeded.seeded_minute_ms // 60_000] = SEEDED_COUNTS
    seeded.old_dead = _in_redis(redis_url, prefix, seeded.hooks["globex"], 3, old_ids, minutes)

    def publish(tenant: str, event_type: str, n: int, **extra: Any) -> list[str]:
        body = {"tenant_id": tenant, "event_type": event_type, **extra}
        return [
            job["id"]
            for i in range(n)
            for job in api("POST", "/v1/events", {**body, "payload": _payload(event_type, i)})[
                "jobs"
            ]
        ]

    seeded.failed_jobs = publish("acme", "order.failed", 2)
    seeded.flaky_jobs = publish("acme", "order.flaky", 3)
    later = (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    [seeded.scheduled_job] = publish("acme", "order.created", 1, deliver_at=later)
    dying = seeded.failed_jobs + seeded.flaky_jobs
    if demo:
        publish("acme", "order.created", 12)
        publish("globex", "user.signed_up", 8)
        publish("initech", "invoice.paid", 5)
        dying += publish("initech", "invoice.voided", 1)  # 410: dead at once, hook disabled
        publish("initech", "invoice.failed", 6)  # 12 failed attempts trip its breaker
    wait_until(lambda: all(_state(api, job) == "dead" for job in dying), "the failing jobs dead")
    young = 12 if demo else 1200
    seeded.young_dead = _in_redis(redis_url, prefix, seeded.hooks["globex"], young, None, {})
    return seeded


def _hook_maker(api: Api, target: Target) -> Callable[[str, str, list[str]], dict[str, Any]]:
    def make(tenant: str, path: str, event_types: list[str]) -> dict[str, Any]:
        body = {"tenant_id": tenant, "url": target.url(path), "event_types": event_types}
        return cast("dict[str, Any]", api("POST", "/v1/webhooks", body))

    return make


def _payload(event_type: str, i: int) -> dict[str, Any]:
    """A distinct payload per event (identical ones would be answered as duplicates)."""
    return {"type": event_type, "n": i, "order": {"id": f"ord_{1000 + i}", "total": 42.5 + i}}


def _state(api: Api, job_id: str) -> str:
    return str(api("GET", f"/v1/jobs/{job_id}")["state"])


def _demo_minutes(now: datetime) -> dict[int, dict[str, int]]:
    """An hour of plausible per-minute counters: a daily rhythm and a failure spike."""
    this_minute = int(now.timestamp()) // 60
    minutes = {}
    for ago in range(1, 60):
        delivered = 80 + (ago * 37) % 50
        failed = 30 + ago % 7 if 12 <= ago <= 18 else ago % 4  # the spike
        dead = 2 if 14 <= ago <= 16 else 0
        minutes[this_minute - ago] = {
            "delivered": delivered,
            "failed": failed,
            "dead": dead,
            "ms_sum": delivered * (35 + ago % 20),
        }
    return minutes


def _in_redis(
    redis_url: str,
    prefix: str,
    hook: dict[str, Any],
    dead: int,
    entry_ids: list[str] | None,
    minutes: dict[int, dict[str, int]],
) -> list[str]:
    """``dead`` dead jobs of ``hook`` (DLQ entry ids ``entry_ids``, else now) and the counters
    of ``minutes``, written into Redis directly: the DLQ as a long-running daemon has it."""

    async def write() -> list[str]:
        redis = aioredis.Redis.from_url(redis_url)
        try:
            async with Client.from_url(redis_url, prefix=prefix) as client:
                if minutes:
                    await control.flush_stats(client.store, minutes)
                return await seed_dead_jobs(
                    client,
                    redis,
                    prefix,
                    dead,
                    b'{"order": {"id": "ord_7", "total": 99.5}}',
                    entry_ids=entry_ids,
                    hook=cast("shapes.Webhook", hook),
                )
        finally:
            await redis.aclose()

    return asyncio.run(write())
