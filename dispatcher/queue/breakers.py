"""Circuit breakers per webhook, shared by every worker through Redis.

Thresholds follow Convoy's defaults (its breaker trips at a 70% failure rate over at least 10
attempts in its observation window): a breaker opens when, over the last minute (two 30 s
buckets), at least ``FEWEST_ATTEMPTS`` attempts were made and ``FAILURE_RATIO`` of them
failed. While open, the webhook's jobs are parked in Redis without spending attempts. After
``delivery.breaker_open_s`` (30 s; doubling on each failed probe, up to 20 times that) one
parked job goes back as the probe (half-open); its success closes the breaker and the parked
jobs return to their queues, its failure opens the breaker again. A webhook that has had no
success for ``delivery.disable_after_s`` (5 days by default, as Svix) is disabled, with the
reason on the webhook. A closed breaker is forgotten a minute after its last report, but the
run of failures it counted is kept per webhook (``Keys.failing``) until a success, an enable
or a delete, so a webhook that fails only now and then is disabled all the same: each report
of a failure brings its breaker back, with the run's start, for the tick to judge.

Workers report outcomes once a second (``report``) rather than per attempt, and read the
breakers of a batch's webhooks in the same round trip as the batch's webhooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson

from dispatcher.model import rfc3339
from dispatcher.queue.keys import shard_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from dispatcher.queue.keys import Keys
    from dispatcher.queue.store import Store

BUCKET_MS = 30_000
FEWEST_ATTEMPTS = 10
FAILURE_RATIO = 0.7
LONGEST_OPEN_FACTOR = 20  # the open period doubles per failed probe, up to this many times
RELEASE_BATCH = 500  # parked jobs one tick puts back per webhook
FORGET_IDLE_MS = 2 * BUCKET_MS
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class Breaker:
    state: str
    failing_since_ms: int | None
    last_error: str | None
    opened_at_ms: int | None
    retry_at_ms: int | None
    probe: str | None  # job id of the probe; "" while the next job is to become it
    opens: int

    @classmethod
    def decode(cls, raw: bytes | None) -> Breaker | None:
        if raw is None:
            return None
        try:
            b = orjson.loads(raw)
            return cls(
                state=str(b.get("s", CLOSED)),
                failing_since_ms=int(b["f"]) if b.get("f") else None,
                last_error=b.get("e"),
                opened_at_ms=b.get("o"),
                retry_at_ms=b.get("u"),
                probe=b.get("pj"),
                opens=int(b.get("n") or 0),
            )
        except (ValueError, TypeError, AttributeError):
            return None

    def holds(self, job_id: str) -> bool:
        """Whether a job must wait: the breaker is open, or half-open for another probe."""
        if self.state == OPEN:
            return True
        return self.state == HALF_OPEN and self.probe not in ("", job_id)

    def to_wire(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failing_since": rfc3339(self.failing_since_ms),
            "opened_at": rfc3339(self.opened_at_ms) if self.state != CLOSED else None,
            "retry_at": rfc3339(self.retry_at_ms) if self.state == OPEN else None,
            "last_error": self.last_error,
        }


@dataclass(slots=True)
class Health:
    """One webhook's outcomes in this process since the last report."""

    ok: int = 0
    failed: int = 0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    webhook_id: str
    state: str
    retry_at_ms: int


@dataclass(frozen=True, slots=True)
class Tick:
    probes: list[tuple[str, str]]  # (webhook id, probe job id or "" when none was parked)
    released: list[tuple[str, int]]  # (webhook id, parked jobs put back)
    to_disable: list[tuple[str, int, str]]  # (webhook id, failing since ms, last error)


async def states(store: Store, webhook_ids: list[str]) -> dict[str, Breaker]:
    """The breakers of these webhooks that exist, each read from its webhook's shard."""
    found: dict[str, Breaker] = {}
    for webhook_id, raw in (await _fields(store, webhook_ids, lambda k: k.breakers)).items():
        breaker = Breaker.decode(raw)
        if breaker is not None:
            found[webhook_id] = breaker
    return found


async def _fields(
    store: Store, webhook_ids: list[str], hash_of: Callable[[Keys], str]
) -> dict[str, bytes]:
    """The fields of these webhooks present in a per-shard hash (``hash_of`` names it), each
    read from its webhook's shard: one HMGET per shard."""
    by_shard: dict[int, list[str]] = {}
    for webhook_id in webhook_ids:
        by_shard.setdefault(shard_of(webhook_id), []).append(webhook_id)
    found: dict[str, bytes] = {}
    for number, ids in by_shard.items():
        shard = store.shard(number)
        raws = await cast(
            "Awaitable[list[bytes | None]]", shard.redis.hmget(hash_of(shard.keys), ids)
        )
        found |= {i: raw for i, raw in zip(ids, raws, strict=True) if raw is not None}
    return found


async def report(store: Store, health: dict[str, Health], *, open_s: float) -> list[Change]:
    args: list[str | int | float] = [
        BUCKET_MS,
        FEWEST_ATTEMPTS,
        FAILURE_RATIO,
        int(open_s * 1000),
        int(open_s * LONGEST_OPEN_FACTOR * 1000),
    ]
    for webhook_id, h in health.items():
        args += [webhook_id, h.ok, h.failed, h.last_error[:_ERROR_CHARS]]
    _now, changes = await store.scripts.breaker_report(
        keys=[store.keys.breakers, store.keys.failing], args=args
    )
    return [
        Change(changes[i].decode(), changes[i + 1].decode(), int(changes[i + 2]))
        for i in range(0, len(changes), 3)
    ]


async def tick(
    store: Store,
    *,
    probe_timeout_s: float,
    disable_after_s: float,
    forget_idle_ms: int | None = None,
) -> Tick:
    """The timed side (``breaker_tick.lua``); ``forget_idle_ms`` defaults to
    ``FORGET_IDLE_MS`` (read at each call)."""
    keys = store.keys
    _now, probes, released, disable = await store.scripts.breaker_tick(
        keys=[keys.breakers, keys.jobs, keys.webhooks, keys.failing],
        args=[
            keys.base,
            int(probe_timeout_s * 1000),
            int(disable_after_s * 1000),
            RELEASE_BATCH,
            FORGET_IDLE_MS if forget_idle_ms is None else forget_idle_ms,
        ],
    )
    return Tick(
        [(probes[i].decode(), probes[i + 1].decode()) for i in range(0, len(probes), 2)],
        [(released[i].decode(), int(released[i + 1])) for i in range(0, len(released), 2)],
        [
            (disable[i].decode(), int(disable[i + 1]), disable[i + 2].decode())
            for i in range(0, len(disable), 3)
        ],
    )


async def take_probe(store: Store, webhook_id: str, job_id: str) -> bool:
    got = await store.scripts.breaker_probe(keys=[store.keys.breakers], args=[webhook_id, job_id])
    return bool(got)


async def reset(store: Store, webhook_id: str) -> None:
    """Close a webhook's breaker now (an operator enabled it): its next job goes straight out
    and the next tick puts its parked jobs back in their queues; its run of failures starts
    again with its next failure."""
    now_ms = store.clock.now_ms()
    closed = {"s": CLOSED, "b": now_ms, "c": [0, 0], "p": [0, 0], "f": 0}
    shard = store.of_webhook(webhook_id)
    pipe = shard.redis.pipeline(transaction=True)
    pipe.hset(shard.keys.breakers, webhook_id, orjson.dumps(closed))
    pipe.hdel(shard.keys.failing, webhook_id)
    await pipe.execute()


async def failing_since(store: Store, webhook_ids: list[str]) -> dict[str, int]:
    """When each of these webhooks that is failing (no success since) started to (ms)."""
    raws = await _fields(store, webhook_ids, lambda k: k.failing)
    return {webhook_id: int(raw) for webhook_id, raw in raws.items() if raw}


async def summary(store: Store, *, most: int = 100) -> dict[str, Any]:
    """For ``GET /v1/status``: how many breakers are open and half-open (in every shard),
    which, and how many jobs are parked behind them."""
    parked = 0
    tripped = []
    for shard in await store.all_shards():
        raws = await cast("Awaitable[dict[bytes, bytes]]", shard.redis.hgetall(shard.keys.breakers))
        if raws:
            pipe = shard.redis.pipeline(transaction=False)
            for webhook_id in raws:
                pipe.zcard(shard.keys.parked(webhook_id.decode()))
            parked += sum(int(n) for n in await pipe.execute())
        for webhook_id, raw in raws.items():
            breaker = Breaker.decode(raw)
            if breaker is not None and breaker.state != CLOSED:
                tripped.append({"webhook_id": webhook_id.decode(), **breaker.to_wire()})
    tripped.sort(key=lambda b: (b["state"], b["webhook_id"]))
    return {
        "open": sum(b["state"] == OPEN for b in tripped),
        "half_open": sum(b["state"] == HALF_OPEN for b in tripped),
        "parked": parked,
        "tripped": tripped[:most],
    }
