"""The delay proxy the multi-region tests put between regions: delay, order, cuts, counts."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex

from tests.delay_proxy import DelayProxy
from tests.helpers import eventually, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

DELAY_S = 0.05


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[DelayProxy]:
    async with DelayProxy(_port_of(redis_url), DELAY_S) as p:
        yield p


def _client(url: str) -> aioredis.Redis:
    """No retries: a cut link must surface as an error, not a second attempt."""
    return aioredis.Redis.from_url(url, retry_on_error=[], socket_timeout=5)


async def test_a_command_through_the_proxy_takes_a_round_trip(proxy: DelayProxy) -> None:
    """A PING through the proxy answers only after the delay in both directions."""
    conn = _client(proxy.url)
    try:
        await conn.ping()  # connect (and the handshake) before timing
        start = time.monotonic()
        assert await conn.ping() is True
        assert time.monotonic() - start >= 2 * DELAY_S
    finally:
        await conn.aclose()


async def test_pipelined_commands_cost_one_round_trip(redis_url: str) -> None:
    """100 commands sent as one pipeline come back after about one round trip, not 100:
    chunks queued behind each other leave together (0.1 s each way, so 100 round trips would
    take 20 s; the bound of 4 leaves room for a loaded machine)."""
    async with DelayProxy(_port_of(redis_url), 0.1) as slow:
        conn = _client(slow.url)
        try:
            await conn.ping()
            pipe = conn.pipeline(transaction=False)
            for i in range(100):
                pipe.echo(f"m{i}")
            start = time.monotonic()
            answers = await pipe.execute()
            elapsed = time.monotonic() - start
        finally:
            await conn.aclose()
    assert answers == [f"m{i}".encode() for i in range(100)], "order kept"
    assert 0.2 <= elapsed < 4 * 0.2


async def test_bytes_are_counted_in_each_direction(proxy: DelayProxy) -> None:
    """What the client sends counts up, what Redis answers counts down; nothing before use."""
    assert (proxy.bytes_up, proxy.bytes_down) == (0, 0)
    conn = _client(proxy.url)
    try:
        await conn.echo("x" * 1000)
        assert proxy.bytes_up > 1000
        assert proxy.bytes_down > 1000
    finally:
        await conn.aclose()


async def test_a_partition_drops_connections_until_healed(proxy: DelayProxy) -> None:
    """After partition() live connections fail and new ones are refused; after heal() the same
    client works again."""
    conn = _client(proxy.url)
    try:
        await conn.ping()
        proxy.partition()
        with pytest.raises(rex.ConnectionError):
            await conn.ping()
        with pytest.raises(rex.ConnectionError):
            await conn.ping()  # a new connection: accepted, then closed at once
        carried = proxy.carried
        proxy.heal()
        assert await conn.ping() is True
        assert proxy.carried > carried
    finally:
        await conn.aclose()


async def test_upstream_down_closes_the_client_connection() -> None:
    """With nothing listening upstream, a client's connection is closed, not left hanging."""
    async with DelayProxy(free_port(), DELAY_S) as p:
        conn = _client(p.url)
        try:
            with pytest.raises(rex.ConnectionError):
                await conn.ping()
        finally:
            await conn.aclose()


async def test_close_ends_live_connections(proxy: DelayProxy) -> None:
    """close() with a client still connected ends its connection and leaves no task behind."""
    conn = _client(proxy.url)
    try:
        await conn.ping()
        await proxy.close()
        with pytest.raises(rex.ConnectionError):
            await conn.ping()
    finally:
        await conn.aclose()


async def test_the_program_proxies_until_terminated(redis_url: str) -> None:
    """``python -m tests.delay_proxy`` forwards with its delay and exits 0 on SIGTERM."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.delay_proxy",
        "--listen", str(port), "--to", f"127.0.0.1:{_port_of(redis_url)}", "--delay-ms", "20",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert f":{port} ->".encode() in line
        conn = _client(f"redis://127.0.0.1:{port}/0")
        try:
            assert await eventually(conn.ping, what="a PING through the program")
        finally:
            await conn.aclose()
    finally:
        process.terminate()
        assert await process.wait() == 0
