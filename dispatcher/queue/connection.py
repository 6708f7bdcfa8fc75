"""Opening Redis the way every part of dispatcher needs it.

redis-py retries a command once, on a new connection, only when its connection broke
(``ConnectionError``): after a Redis restart every pooled connection is dead, and without this the
first call on each would fail. Timeouts are never retried: a command that may have run is not
run again behind the caller's back. If a broken connection hides a publish that did run, the
retry enqueues the same job ids again; receivers see a duplicate with the same ``webhook-id``,
which at-least-once allows. The daemon's loops back off on their own (RELIABILITY R9).
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError  # noqa: A004 - redis-py's, not the builtin

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
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        decode_responses=False,
        health_check_interval=0,
    )
    return Redis.from_pool(pool)  # the client owns the pool and closes it with aclose()
