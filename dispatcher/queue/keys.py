"""Every Redis key dispatcher uses, and the layout behind them.

All keys of one deployment start with ``redis.prefix`` and share one hash tag, ``{0}``
(shard 0), so every script may touch any of them and the same code runs on Redis
Cluster. A later sharding step gives each shard its own tag; nothing outside this
module formats a key.

Layout (``P`` is the prefix, ``Q`` a queue name, ``S`` one of a queue's three priority streams,
``Q:high``, ``Q`` or ``Q:low``, ``T`` a tenant id):

``P:{0}:webhooks``        hash  webhook id -> webhook JSON (secrets included)
``P:{0}:tenant:T``        hash  webhook id -> routing JSON ``{"e": [types], "on": 1, "q": Q}``
``P:{0}:jobs``            hash  job id -> record: meta JSON, a newline, then the payload bytes
``P:{0}:q:S:ready``       stream of jobs ready to send, entries ``{j: job id, w: webhook id}``,
                          read by the consumer group ``dispatch``; an entry is XDELed when its
                          job leaves the queue, so the stream holds only unfinished work
``P:{0}:q:S:delayed``     zset  job id -> due time (ms, Redis clock): retries and scheduled jobs
``P:{0}:done``            zset  job id -> finished time (ms): finished records, swept after
                          ``jobs.retention_s``
``P:{0}:dlq``             stream of dead jobs ``{j: job id, r: reason}`` (or ``{raw, r}`` for an
                          entry that could not be parsed); entry ids give a stable cursor
``P:{0}:idem:T:K``        string, the first answer to a publish with idempotency key K (24 h)
``P:{0}:stats:M``         hash  counters for minute M (delivered, failed, dead, ms_sum), 1 h TTL
``P:{0}:paused``          set   paused queue names
``P:{0}:workers``         hash  consumer name -> heartbeat JSON
``P:{0}:rates``           hash  webhook id -> GCRA theoretical arrival time (ms) of its rate limit
``P:{0}:lease:W``         zset  job id -> lease expiry (ms): attempts in flight to webhook W, for
                          its ``max_in_flight`` across processes; a dead holder's lease expires
``P:{0}:breakers``        hash  webhook id -> circuit breaker JSON (only webhooks that failed)
``P:{0}:parked:W``        zset  job id -> parked time (ms): jobs waiting for W's breaker to close

``breaker_tick.lua`` builds the ``parked`` and ``delayed`` names itself from ``Keys.base``, since
which it needs depends on the data; they share the hash tag, so this stays cluster-safe.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "dispatch"
PRIORITIES = ("high", "normal", "low")  # the order workers serve them in


def stream_of(queue: str, priority: str) -> str:
    """The stream (``Q``, ``Q:high`` or ``Q:low``) that carries a queue's jobs of one priority.

    A queue is three streams, each with its own ready stream, delayed zset and consumer group;
    every function below that takes a ``queue`` takes one of these stream names.
    """
    return queue if priority == "normal" else f"{queue}:{priority}"


def streams_of(queue: str) -> tuple[str, ...]:
    """A queue's streams, highest priority first."""
    return tuple(stream_of(queue, p) for p in PRIORITIES)


def queue_of(stream: str) -> str:
    return stream.partition(":")[0]


def priority_of(stream: str) -> str:
    return stream.partition(":")[2] or "normal"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "dispatcher"
    shard: int = 0

    @property
    def _base(self) -> str:
        return f"{self.prefix}:{{{self.shard}}}"

    @property
    def base(self) -> str:
        """The start every key of this shard shares, for scripts that build key names."""
        return f"{self._base}:"

    @property
    def webhooks(self) -> str:
        return f"{self._base}:webhooks"

    def tenant(self, tenant_id: str) -> str:
        return f"{self._base}:tenant:{tenant_id}"

    @property
    def jobs(self) -> str:
        return f"{self._base}:jobs"

    def ready(self, queue: str) -> str:
        return f"{self._base}:q:{queue}:ready"

    def delayed(self, queue: str) -> str:
        return f"{self._base}:q:{queue}:delayed"

    @property
    def done(self) -> str:
        return f"{self._base}:done"

    @property
    def dlq(self) -> str:
        return f"{self._base}:dlq"

    def idempotency(self, tenant_id: str, key: str) -> str:
        return f"{self._base}:idem:{tenant_id}:{key}"

    def stats(self, minute: int) -> str:
        return f"{self._base}:stats:{minute}"

    @property
    def paused(self) -> str:
        return f"{self._base}:paused"

    @property
    def workers(self) -> str:
        return f"{self._base}:workers"

    @property
    def rates(self) -> str:
        return f"{self._base}:rates"

    def lease(self, webhook_id: str) -> str:
        return f"{self._base}:lease:{webhook_id}"

    @property
    def breakers(self) -> str:
        return f"{self._base}:breakers"

    def parked(self, webhook_id: str) -> str:
        return f"{self._base}:parked:{webhook_id}"

    @property
    def pattern(self) -> str:
        """A SCAN pattern that matches every key of this deployment."""
        return f"{self.prefix}:*"
