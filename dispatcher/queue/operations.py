"""Background DLQ operations (a large replay or purge): their state in Redis, in shard 0, so
any admin process can answer for one and take over one whose driver stopped.

An operation is a hash (``Keys.operation``) with its kind, plan, position and counters; while
it runs, its id is in the ``Keys.operations`` zset, scored by its driver's last sign of life.
Counters of what changed (``changed``, ``skipped:<reason>``) are HINCRBY'd after each page.
Steps are idempotent (a replayed job is no longer dead, a purged entry is gone), so a page done
twice, by a driver that died before it recorded its position or by two drivers at once, changes
nothing twice; a page done but not recorded before its driver died is not counted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson

from dispatcher.model import rfc3339
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping

    from redis.typing import EncodableT, FieldT

    from dispatcher.queue.store import Store

#: A finished operation stays readable this long.
FINISHED_TTL_S = 7 * 86_400
#: A running operation whose driver gave no sign of life this long is taken over.
STALE_MS = 30_000
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
_ID = re.compile(r"op_[0-9a-f]{20}")
_SKIPPED = "skipped:"


def is_operation_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


@dataclass(slots=True)
class Operation:
    id: str
    kind: str  # "replay" or "purge"
    state: str
    plan: dict[str, Any]
    position: dict[str, Any] | None
    created_at_ms: int
    updated_at_ms: int
    total: int | None = None  # DLQ entries to read, once counted
    done: int = 0  # DLQ entries read
    changed: int = 0  # jobs replayed or entries purged
    skipped: dict[str, int] = field(default_factory=dict)
    finished_at_ms: int | None = None
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "replayed" if self.kind == "replay" else "purged": self.changed,
            "created_at": rfc3339(self.created_at_ms),
            "updated_at": rfc3339(self.updated_at_ms),
            "finished_at": rfc3339(self.finished_at_ms),
            "error": self.error,
        }
        if self.kind == "replay":
            wire["skipped"] = sum(self.skipped.values())
            wire["skipped_reasons"] = dict(sorted(self.skipped.items()))
        return wire

    @classmethod
    def decode(cls, op_id: str, raw: Mapping[bytes, bytes]) -> Operation:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        total = fields.get("total")
        finished = fields.get("finished_at_ms")
        return cls(
            id=op_id,
            kind=fields["kind"],
            state=fields["state"],
            plan=orjson.loads(fields["plan"]),
            position=orjson.loads(fields.get("position", "null")),
            created_at_ms=int(fields["created_at_ms"]),
            updated_at_ms=int(fields["updated_at_ms"]),
            total=int(total) if total else None,
            done=int(fields.get("done", 0)),
            changed=int(fields.get("changed", 0)),
            skipped={
                k.removeprefix(_SKIPPED): int(v)
                for k, v in fields.items()
                if k.startswith(_SKIPPED)
            },
            finished_at_ms=int(finished) if finished else None,
            error=fields.get("error"),
        )


async def start(
    store: Store,
    kind: str,
    plan: dict[str, Any],
    position: dict[str, Any],
    *,
    done: int,
    changed: int,
    skipped: Mapping[str, int],
) -> Operation:
    """Record a new running operation (with what its first page did) and return it."""
    home = store.home
    now_ms = store.clock.now_ms()
    op = Operation(
        id=f"op_{os.urandom(10).hex()}",
        kind=kind,
        state=RUNNING,
        plan=plan,
        position=position,
        created_at_ms=now_ms,
        updated_at_ms=now_ms,
        done=done,
        changed=changed,
        skipped=dict(skipped),
    )
    mapping: dict[FieldT, EncodableT] = {
        "kind": kind,
        "state": RUNNING,
        "plan": orjson.dumps(plan).decode(),
        "position": orjson.dumps(position).decode(),
        "created_at_ms": now_ms,
        "updated_at_ms": now_ms,
        "done": done,
        "changed": changed,
        **{_SKIPPED + reason: n for reason, n in skipped.items()},
    }
    pipe = home.redis.pipeline(transaction=True)
    pipe.hset(home.keys.operation(op.id), mapping=mapping)
    pipe.zadd(home.keys.operations, {op.id: now_ms})
    with redis_errors():
        await pipe.execute()
    return op


async def get(store: Store, op_id: str) -> Operation | None:
    if not is_operation_id(op_id):
        return None
    home = store.home
    with redis_errors():
        raw = await cast(
            "Awaitable[dict[bytes, bytes]]", home.redis.hgetall(home.keys.operation(op_id))
        )
    return Operation.decode(op_id, raw) if raw else None


async def record(
    store: Store,
    op_id: str,
    *,
    position: dict[str, Any] | None,
    done: int,
    changed: int,
    skipped: Mapping[str, int],
) -> None:
    """What one page did: the position to go on from, entries read so far, and the counts to
    add; it is also the driver's sign of life."""
    home = store.home
    now_ms = store.clock.now_ms()
    key = home.keys.operation(op_id)
    pipe = home.redis.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "position": orjson.dumps(position).decode(),
            "done": done,
            "updated_at_ms": now_ms,
        },
    )
    if changed:
        pipe.hincrby(key, "changed", changed)
    for reason, n in skipped.items():
        pipe.hincrby(key, _SKIPPED + reason, n)
    pipe.zadd(home.keys.operations, {op_id: now_ms}, xx=True)
    with redis_errors():
        await pipe.execute()


async def set_total(store: Store, op_id: str, total: int) -> None:
    home = store.home
    with redis_errors():
        await home.redis.hset(home.keys.operation(op_id), "total", total)


async def finish(store: Store, op_id: str, state: str, error: str | None = None) -> None:
    """The operation ends (``succeeded`` or ``failed``); it stays readable FINISHED_TTL_S."""
    home = store.home
    now_ms = store.clock.now_ms()
    key = home.keys.operation(op_id)
    fields: dict[FieldT, EncodableT] = {
        "state": state,
        "finished_at_ms": now_ms,
        "updated_at_ms": now_ms,
    }
    if error is not None:
        fields["error"] = error
    pipe = home.redis.pipeline(transaction=True)
    pipe.hset(key, mapping=fields)
    pipe.expire(key, FINISHED_TTL_S)
    pipe.zrem(home.keys.operations, op_id)
    with redis_errors():
        await pipe.execute()


async def take_stale(store: Store, *, limit: int = 10) -> list[str]:
    """Running operations whose driver gave no sign of life for ``STALE_MS``, now marked as
    taken (another process that looks at once may take one too: steps are idempotent)."""
    home = store.home
    now_ms = store.clock.now_ms()
    with redis_errors():
        stale = await cast(
            "Awaitable[list[bytes]]",
            home.redis.zrangebyscore(
                home.keys.operations, "-inf", now_ms - STALE_MS, start=0, num=limit
            ),
        )
        ids = [s.decode() for s in stale]
        if ids:
            await home.redis.zadd(home.keys.operations, dict.fromkeys(ids, now_ms), xx=True)
    return ids


async def forget(store: Store, op_id: str) -> None:
    """Stop looking for an operation whose state is gone or finished."""
    home = store.home
    with redis_errors():
        await home.redis.zrem(home.keys.operations, op_id)
