"""Scenario 11: the admin API under abuse while events flow."""

from __future__ import annotations

import asyncio
import io
import random
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from tests.faults.harness import Scenario
from tests.faults.table import keep
from tests.helpers import free_port

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

TOKEN = "fault-suite-admin-token-0123456789"  # noqa: S105 - a test token
PATHS = (
    ("POST", "/v1/webhooks"),
    ("PATCH", "/v1/webhooks/wh_00000000000000000000"),
    ("DELETE", "/v1/webhooks/wh_00000000000000000000"),
    ("POST", "/v1/events"),
    ("POST", "/v1/webhooks/wh_00000000000000000000/deliveries"),
    ("POST", "/v1/dlq/replay"),
    ("DELETE", "/v1/dlq?confirm=true"),
    ("POST", "/v1/queues/default/pause"),
    ("GET", "/v1/jobs/job_x"),
    ("GET", "/v1/dlq?limit=-1"),
    ("GET", "/v1/status"),
)


def _junk(rng: random.Random) -> bytes:
    """A body from a small, seeded menagerie of wrong things."""
    choices: list[Any] = [
        b"",
        b"{",
        b"null",
        b"[]",
        b'{"tenant_id": 5}',
        b'{"tenant_id": "acme", "url": "ftp://x", "event_types": "all"}',
        b'{"tenant_id": "acme", "event_type": "", "payload": {}}',
        b'{"all": "yes"}',
        b'{"ids": [1, 2, 3]}',
        b"\xff\xfe\x00garbage",
        orjson.dumps({"tenant_id": "a" * 10_000, "event_type": "x", "payload": {}}),
        orjson.dumps({"deliver_at": "not a time", "tenant_id": "t", "event_type": "x"}),
    ]
    choice: bytes = rng.choice(choices)
    return choice


async def _slow_client(port: int, hold_s: float) -> None:
    """Open a connection, send half a request line, and sit on it."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
        await writer.drain()
        await asyncio.sleep(hold_s)
    finally:
        writer.close()  # also when the server cut it first: no writer left to the collector


@pytest.mark.alone  # its p99 bound compares two phases
async def test_admin_api_under_abuse_changes_nothing_and_delivery_goes_on(
    tmp_path: Path,
) -> None:
    """Bad tokens, junk bodies, a 5 MB body and slow clients against the admin API while
    events flow: no 5xx, every refused call leaves Redis as it was, delivery is unaffected."""
    port = free_port()
    settings = {"admin_listen": f"127.0.0.1:{port}", "admin_token": TOKEN}
    async with Scenario("11 admin API abuse", tmp_path, daemons=1, settings=settings) as run:
        redis, keys = run.client.store.redis, run.client.store.keys
        webhooks_before = await redis.hgetall(keys.webhooks)
        rng = random.Random(11)
        statuses: dict[int, int] = {}
        base = f"http://127.0.0.1:{port}"
        async with run.publishing(per_second=150), aiohttp.ClientSession() as http:
            await run.steady(2)
            async with run.fault():
                slow = [asyncio.create_task(_slow_client(port, 3.0)) for _ in range(50)]
                for n in range(300):
                    method, path = PATHS[n % len(PATHS)]
                    auth = {"Authorization": f"Bearer wrong-{n}"} if n % 3 else {}
                    async with http.request(
                        method, base + path, data=_junk(rng), headers=auth
                    ) as answer:
                        statuses[answer.status] = statuses.get(answer.status, 0) + 1
                        assert answer.status == 401, (method, path, answer.status)
                for n in range(300):
                    method, path = PATHS[n % len(PATHS)]
                    if path.startswith(("/v1/queues", "/v1/dlq?confirm")):
                        continue  # valid calls with a good token: not refusals
                    headers = {"Authorization": f"Bearer {TOKEN}"}
                    async with http.request(
                        method, base + path, data=_junk(rng), headers=headers
                    ) as answer:
                        statuses[answer.status] = statuses.get(answer.status, 0) + 1
                        assert answer.status < 500, (method, path, await answer.text())
                huge = b'{"payload": "' + b"x" * 5_000_000 + b'"}'
                headers = {"Authorization": f"Bearer {TOKEN}"}
                body = io.BytesIO(huge)
                async with http.post(base + "/v1/events", data=body, headers=headers) as answer:
                    assert answer.status == 413
                await asyncio.gather(*slow)
            await run.steady(2)
        row = await run.settle()
        keep(row)
        assert await redis.hgetall(keys.webhooks) == webhooks_before
        assert await redis.smembers(keys.paused) == set()
        assert not any(status >= 500 for status in statuses), statuses
        before, during = row.latency_ms["before"], row.latency_ms["during"]
        assert before is not None
        assert during is not None
        assert during[1] <= max(1.5 * before[1], before[1] + 20), row.latency_ms
