"""What the backlog alerts measure, read from counters Redis keeps anyway: no scans.

- **queued**: per stream, ``XLEN`` minus the consumer group's pending count (as the status),
  plus the jobs held for paused webhooks (``ZCARD`` of each one's held zset, pauses.py) and
  those waiting behind a FIFO lane's head (the shard's count of them, ordering.py).
- **oldest lane head**: since when the oldest head of a FIFO lane holds it (ordering.py).
- **oldest ready job**: a stream entry id starts with the Redis time (ms) it was added at, and the
  group hands entries out in id order, so the first entry after the group's
  ``last-delivered-id`` is the oldest one nobody has claimed: one ``XRANGE ... COUNT 1``.
- **outboxes** (with ``[regions]`` only): the jobs published here for another region and not
  relayed yet count as queued, and the oldest one's age as a ready job's (status.outboxes):
  a region cut off raises the same alerts as a stuck queue.
- **DLQ growth**: ``XINFO STREAM``'s ``entries-added`` counts every entry ever added to the
  DLQ, replayed or purged ones included; the policy (``dispatcher.alerts``) turns samples of it
  into "added within the window".

Two round trips per check, whatever the number of jobs (three on a Redis Cluster, which asks
TIME apart), two per shard for the held jobs and one per shard for the FIFO lanes, and one
for the outboxes with regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from dispatcher.ids import sid_ms
from dispatcher.queue import ordering, pauses
from dispatcher.queue.keys import GROUP, streams_of
from dispatcher.queue.records import redis_errors
from dispatcher.queue.status import Outbox, known_queues, outboxes

if TYPE_CHECKING:
    from dispatcher.queue.store import Store


@dataclass(frozen=True, slots=True)
class Backlog:
    now_ms: int  # the Redis server's time when measured
    queued: int  # ready and unclaimed, every queue and priority
    oldest_ready_ms: int | None  # when the oldest ready, unclaimed job became ready
    #: the stream it waits in (``Q``, ``Q:high`` or ``Q:low``; ``outbox:R`` for region R's jobs)
    oldest_queue: str | None
    dlq_added: int  # entries ever added to the DLQ stream (0 while it does not exist)
    held: int = 0  # jobs held for paused webhooks (pauses.py), every shard
    ordering: int = 0  # jobs waiting behind a FIFO lane's head (ordering.py), every shard
    oldest_head_ms: int | None = None  # since when the oldest FIFO lane head holds its lane
    #: with regions: the outboxes by destination region (their jobs are not in ``queued``)
    outboxes: dict[str, Outbox] = field(default_factory=dict)

    @property
    def outbox(self) -> int:
        """Jobs waiting in this Redis's outboxes to be relayed to their region."""
        return sum(outbox.depth for outbox in self.outboxes.values())

    @property
    def oldest_ready_age_s(self) -> float:
        if self.oldest_ready_ms is None:
            return 0.0
        return max(self.now_ms - self.oldest_ready_ms, 0) / 1000

    @property
    def oldest_head_age_s(self) -> float:
        if self.oldest_head_ms is None:
            return 0.0
        return max(self.now_ms - self.oldest_head_ms, 0) / 1000


async def measure(store: Store) -> Backlog:
    """The backlog of every known queue (``default``, served, paused) in every shard, and the
    DLQs' counter."""
    queues = await known_queues(store)
    with redis_errors():
        shards = await store.all_shards()
    targets = [(shard, s) for shard in shards for queue in queues for s in streams_of(queue)]
    pipe = store.redis.pipeline(transaction=False)
    if store.cluster is None:
        pipe.time()  # a cluster pipeline refuses keyless commands: asked apart below
    for shard in shards:
        pipe.xinfo_stream(shard.keys.dlq)
    for shard, stream in targets:
        pipe.xlen(shard.keys.ready(stream))
        pipe.xinfo_groups(shard.keys.ready(stream))
    with redis_errors():
        replies = await pipe.execute(raise_on_error=False)
        if store.cluster is not None:
            replies.insert(0, await store.cluster.time())
    seconds, micros = _ok(replies[0])
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    dlqs = replies[1 : 1 + len(shards)]
    dlq_added = sum(0 if _missing(dlq) else int(_ok(dlq)["entries-added"]) for dlq in dlqs)
    rest = replies[1 + len(shards) :]
    queued = 0
    starts: list[tuple[Store, str, bytes]] = []  # per stream, where its unclaimed entries begin
    for (shard, stream), length, groups in zip(targets, rest[::2], rest[1::2], strict=True):
        group = None if _missing(groups) else _group(_ok(groups))
        pending = int(group["pending"]) if group else 0
        queued += max(int(_ok(length)) - pending, 0)
        if int(_ok(length)) > pending:
            starts.append((shard, stream, b"(" + group["last-delivered-id"] if group else b"-"))
    oldest_ms, oldest_queue = await _oldest(store, starts)
    held = await pauses.held(store)
    behind = await ordering.waiting(store)
    relaying = await outboxes(store)
    for region, outbox in relaying.items():
        if outbox.oldest_ms is not None and (oldest_ms is None or outbox.oldest_ms < oldest_ms):
            oldest_ms, oldest_queue = outbox.oldest_ms, f"outbox:{region}"
    return Backlog(
        now_ms,
        queued,
        oldest_ms,
        oldest_queue,
        dlq_added,
        held.jobs,
        behind.jobs,
        behind.oldest_head_ms,
        relaying,
    )


async def _oldest(
    store: Store, starts: list[tuple[Store, str, bytes]]
) -> tuple[int | None, str | None]:
    if not starts:
        return None, None
    pipe = store.redis.pipeline(transaction=False)
    for shard, stream, start in starts:
        pipe.xrange(shard.keys.ready(stream), min=start, max="+", count=1)
    with redis_errors():
        replies = await pipe.execute(raise_on_error=False)
    oldest: tuple[int | None, str | None] = (None, None)
    for (_, stream, _), reply in zip(starts, replies, strict=True):
        if _missing(reply) or not reply:
            continue  # deleted between the two round trips
        entry_ms = sid_ms(_ok(reply)[0][0].decode())
        if oldest[0] is None or entry_ms < oldest[0]:
            oldest = (entry_ms, stream)
    return oldest


def _group(groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    for group in groups:
        name = group.get("name")
        if name in (GROUP, GROUP.encode()):
            return group
    return None


def _missing(reply: object) -> bool:
    """A reply that says the key is not there (yet): ``ERR no such key``."""
    return isinstance(reply, rex.ResponseError) and "no such key" in str(reply).lower()


def _ok(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply
