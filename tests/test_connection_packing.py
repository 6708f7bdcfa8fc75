"""Commands are packed by hiredis (queue/connection.py): the same bytes as redis-py's packer."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from dispatcher.queue.connection import open_redis, packing

CASES = [
    ("SET", "k", "v"),
    ("SCRIPT LOAD", "return 1"),
    (b"XINFO GROUPS", b"s"),
    ("EVALSHA", "ab" * 20, 2, "k1", "k2", 0, -3, 2**70, 0.1, 1e20, 1.5e-7, "é", b"\x00\r\n"),
    ("SET", "k", b"x" * 70_000),  # beyond redis-py's buffer cutoff
    ("SET", "k", bytearray(b"ba")),
    ("SET", "k", memoryview(b"mv")),
    ("ZADD", "z", 1.5, "m", 1e20, "n"),
    ("SET", "k", b""),
    (b"CLIENT SETNAME", "x"),
]


@pytest.mark.parametrize("args", CASES, ids=range(len(CASES)))
def test_packed_bytes_are_redis_pys(args: tuple[object, ...]) -> None:
    """Every kind of argument we send is packed to exactly the bytes redis-py would send."""
    for cls in (Connection, UnixDomainSocketConnection):
        ours, theirs = packing(cls)(), cls()
        assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, True, object()])
def test_unpackable_argument_is_a_data_error(bad: object) -> None:
    """An argument Redis cannot take fails with redis-py's DataError, as before."""
    with pytest.raises(DataError):
        packing(Connection)().pack_command("SET", "k", bad)  # type: ignore[arg-type]


async def test_client_round_trips_through_the_packer(redis_url: str) -> None:
    """A client from open_redis uses the packer and Redis reads what it sends."""
    redis = open_redis(redis_url)
    try:
        assert isinstance(redis, Redis)
        assert redis.connection_pool.connection_class is packing(Connection)
        await redis.set("packing:k", b"\x00\r\n" * 3)
        assert await redis.get("packing:k") == b"\x00\r\n" * 3
        await redis.delete("packing:k")
    finally:
        await redis.aclose()
