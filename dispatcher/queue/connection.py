"""Opening Redis the way every part of dispatcher needs it: one server, a Cluster or Sentinel.

redis-py retries a command once, on a new connection, only when its connection broke
(``ConnectionError``): after a Redis restart every pooled connection is dead, and without this the
first call on each would fail. Timeouts are never retried: a command that may have run is not
run again behind the caller's back. If a broken connection hides a publish that did run, the
retry enqueues the same job ids again; receivers see a duplicate with the same ``webhook-id``,
which at-least-once allows. The daemon's loops back off on their own (RELIABILITY R9).

The same discipline holds on the two other forms of ``redis.url`` (see ``urls.py``):

- **Redis Cluster**, through redis-py's ``RedisCluster``: every key shares one hash tag, so each
  script and transaction runs on the one node that owns that slot. A command is retried once
  after a broken connection or a cluster that is reconfiguring (the topology is read again
  first), never after a timeout. One exception is redis-py's own: its cluster *pipelines* and
  transactions also retry once after a timeout. Ours only read, write the same hash fields
  again (webhooks) or add to the per-minute counters, so the worst case is a counter counted
  twice. A cluster node's pool raises rather than waits when full, so a semaphore bounds the
  commands in flight at ``max_connections``, as the single server's blocking pool does.
- **Sentinel**, through ``Sentinel(...).master_for(service)``: a client of the current master,
  with the same blocking pool and retry as a single server; a broken connection asks the
  sentinels for the master again, so after a failover commands go to the promoted replica.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any, Final, cast

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import (
    AbstractStrategy,
    ClusterNode,
    ClusterPipeline,
    RedisCluster,
    TransactionStrategy,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,  # noqa: A004 - redis-py's, not the builtin
    OutOfMemoryError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispatcher.errors import RedisUnavailable
from dispatcher.queue.urls import ClusterUrl, SentinelUrl, absolute_unix, parse

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection
    from redis.typing import EncodableT

#: How long one command may take before its connection is dropped. Longer than any
#: XREADGROUP BLOCK we issue, so a blocking read never times out on its own socket.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0

STANDALONE: Final = "standalone"
CLUSTER: Final = "cluster"
SENTINEL: Final = "sentinel"


#: Errors that mean "Redis cannot serve us now" (down, loading, failing over, full), as opposed
#: to a fault in what we asked (a script error, a key of the wrong type).
_UNAVAILABLE: Final = (
    ConnectionError,  # BusyLoadingError, MasterNotFoundError and the like are subclasses
    RedisTimeoutError,
    TimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
    OutOfMemoryError,
    RedisUnavailable,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis is unavailable, rather than that a request was at fault."""
    return isinstance(exc, _UNAVAILABLE)


def _retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))


def open_redis(url: str, *, max_connections: int = 64, home_key: str = "{0}") -> Redis | Cluster:
    """A client whose pool waits for a free connection rather than failing when busy.

    ``home_key`` is any key of this deployment: on a cluster, ``TIME`` is asked of the node that
    owns its slot, the node whose clock the scripts read.
    """
    target = parse(url)
    if isinstance(target, ClusterUrl):
        return Cluster.open(target, max_connections=max_connections, home_key=home_key)
    if isinstance(target, SentinelUrl):
        return _open_sentinel(target, max_connections=max_connections)
    pool = BlockingConnectionPool.from_url(
        absolute_unix(url),
        max_connections=max_connections,
        timeout=SOCKET_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=_retry(),
        decode_responses=False,
        health_check_interval=0,
    )
    pool.connection_class = _packing_with_hiredis(pool.connection_class)
    return Redis.from_pool(pool)  # the client owns the pool and closes it with aclose()


_PLAIN: Final = frozenset({bytes, str, int})


class _HiredisPacking:
    """A connection that packs a command in one C call (hiredis, as redis-py's synchronous
    client does), not redis-py's asyncio packer, which costs more than the rest of a publish.
    Anything but bytes, str and int (floats, bools, memoryviews) and a command name of two
    words go the usual way, so the bytes sent are the same."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        if args and all(type(arg) in _PLAIN for arg in args):
            name = args[0]
            if not (b" " in name if isinstance(name, bytes) else " " in str(name)):
                return [hiredis.pack_command(cast("Any", args))]
        return cast("list[bytes]", super().pack_command(*args))  # type: ignore[misc]


_WITH_HIREDIS: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packing_with_hiredis(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (a TCP, TLS or unix-socket connection) packing with hiredis; one class each."""
    if cls not in _WITH_HIREDIS:
        _WITH_HIREDIS[cls] = type(f"Hiredis{cls.__name__}", (_HiredisPacking, cls), {})
    return _WITH_HIREDIS[cls]


def mode_of(redis: object) -> str:
    """``standalone``, ``cluster`` or ``sentinel``: how a client from `open_redis` reaches Redis."""
    if isinstance(redis, Cluster):
        return CLUSTER
    if isinstance(redis, SentinelMaster):
        return SENTINEL
    return STANDALONE


# --- Redis Cluster ------------------------------------------------------------------------------

#: Set while a task holds one of the cluster client's slots, so the commands redis-py issues
#: inside a pipeline (redirections) do not wait for a second one.
_holding: contextvars.ContextVar[bool] = contextvars.ContextVar("_holding", default=False)


class Cluster(RedisCluster):
    """``RedisCluster`` that never retries after a timeout and waits for a free connection."""

    # redis-py retries these (and TimeoutError) after reading the topology again.
    # Narrower than redis-py's on purpose: TimeoutError is left out.
    ERRORS_ALLOW_RETRY = (ConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]

    # Set by open(); class-level defaults keep RedisCluster's own __init__ untouched.
    home_key: str = "{0}"
    _slots: asyncio.Semaphore | None = None

    @classmethod
    def open(cls, url: ClusterUrl, *, max_connections: int, home_key: str) -> Cluster:
        client = cls(
            startup_nodes=[ClusterNode(host, port) for host, port in url.nodes],
            username=url.username,
            password=url.password,
            ssl=url.tls,
            # Room beyond the semaphore for the redirections redis-py sends on its own.
            max_connections=2 * max_connections,
            retry=_retry(),
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            decode_responses=False,
            health_check_interval=0,
        )
        client.home_key = home_key
        client._slots = asyncio.Semaphore(max_connections)
        return client

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        if self._slots is None or _holding.get():
            return await super().execute_command(*args, **kwargs)
        async with self._slots:
            token = _holding.set(True)
            try:
                return await super().execute_command(*args, **kwargs)
            finally:
                _holding.reset(token)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py refuses it
        # ClusterPipeline only looks abstract to mypy; redis-py builds it the same way.
        return _Pipeline(self, transaction)  # type: ignore[abstract]

    async def home_node(self) -> ClusterNode:
        """The primary that owns dispatcher's hash slot."""
        if self._initialize:
            await self.initialize()
        node = self.get_node_from_key(self.home_key)
        if node is None:
            raise SlotNotCoveredError(f"no node serves the slot of {self.home_key}")
        return node

    async def time(self, **kwargs: Any) -> Any:
        """TIME of the node the scripts run on, not of a random one."""
        return await self.execute_command("TIME", target_nodes=await self.home_node(), **kwargs)


class _Pipeline(ClusterPipeline):
    """A cluster pipeline that holds one of the client's slots while it runs.

    A transaction queues its commands without IO. redis-py 8.1 finds the slot of each command
    of a cluster transaction by running ``asyncio.run`` in a new thread, which also initializes
    the client there when it needs it: the connections it opens then belong to a loop that is
    closed at once, and every later use of them fails. Our transactions (webhook records) name
    a key first, so the slot is known from it; redis-py still checks at ``execute`` that all
    keys share one slot, and runs MULTI/EXEC on the node that owns it.
    """

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not self._transaction:
            return super().execute_command(*args, **kwargs)
        strategy = cast("TransactionStrategy", self._execution_strategy)
        key = args[1]
        slot = key_slot(key.encode() if isinstance(key, str) else bytes(key))
        strategy._pipeline_slots.add(slot)  # noqa: SLF001
        return AbstractStrategy.execute_command(strategy, *args, **kwargs)

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = cast("Cluster", self.cluster_client)
        if self._transaction and client._initialize:  # noqa: SLF001
            await client.initialize()  # the node of the slot must be known
        slots = client._slots  # noqa: SLF001 - our own class
        if slots is None or _holding.get():
            return await super().execute(raise_on_error, allow_redirections)
        async with slots:
            token = _holding.set(True)
            try:
                return await super().execute(raise_on_error, allow_redirections)
            finally:
                _holding.reset(token)


# --- Sentinel -----------------------------------------------------------------------------------


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Connections to whichever server the sentinels name master, waiting when all are busy."""


class SentinelMaster(Redis):
    """A client of the master; closing it also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        await super().aclose(close_connection_pool)
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def _open_sentinel(url: SentinelUrl, *, max_connections: int) -> SentinelMaster:
    timeouts = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}
    sentinel = Sentinel(list(url.sentinels), sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
    master: SentinelMaster = sentinel.master_for(
        url.service,
        redis_class=SentinelMaster,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        timeout=SOCKET_TIMEOUT_S,
        retry=_retry(),
        db=url.db,
        username=url.username,
        password=url.password,
        decode_responses=False,
        health_check_interval=0,
        **timeouts,
    )
    return master
