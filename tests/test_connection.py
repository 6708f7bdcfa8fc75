"""Opening Redis (queue/connection.py): commands go out as redis-py would send them."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from dispatcher.queue.connection import _packing_with_hiredis, open_redis

_COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 2, "k:{0}:tenant:é", b"k:{0}:jobs", "word word", b"\x00\xff" * 200),
    ("SET", "k", 0, -12, 2**62),
    ("SCRIPT LOAD", "return 1"),  # a command name of two words
    (b"CLIENT SETNAME", "x"),
    ("ZADD", "z", 1.5, "m", 1e20, "n"),  # floats: redis-py's own way
    ("SET", "k", b""),
]


@pytest.mark.parametrize("args", _COMMANDS)
def test_a_command_is_packed_to_the_bytes_redis_py_sends(args: tuple[Any, ...]) -> None:
    """The hiredis packer writes exactly what redis-py's asyncio connection writes."""
    for cls in (Connection, UnixDomainSocketConnection):
        fast, plain = _packing_with_hiredis(cls)(), cls()
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))


async def test_an_opened_client_packs_with_hiredis_and_round_trips(redis_url: str) -> None:
    """A client from open_redis uses the hiredis packer and reads back what it wrote."""
    client = open_redis(redis_url)
    assert isinstance(client, Redis)
    try:
        assert client.connection_pool.connection_class.__name__.startswith("Hiredis")
        await client.set("test_connection:é", "ünïcode ✓")
        assert await client.get("test_connection:é") == "ünïcode ✓".encode()
    finally:
        await client.delete("test_connection:é")
        await client.aclose()
