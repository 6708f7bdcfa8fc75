"""Opening Redis the way every part of dispatcher needs it.

redis-py's own retries are turned off: a script such as ``publish`` must not be run twice
behind the caller's back after a timeout, and every loop of the daemon already reconnects
with capped, jittered backoff of its own (RELIABILITY R9).
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

#: How long one command may take before its connection is dropped. Longer than any
#: XREADGROUP BLOCK we issue, so a blocking read never times out on its own socket.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0


def open_redis(url: str, *, max_connections: int = 64) -> Redis:
    """A client whose pool waits for a free connection rather than failing when busy."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=SOCKET_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
        health_check_interval=0,
    )
    return Redis.from_pool(pool)  # the client owns the pool and closes it with aclose()
