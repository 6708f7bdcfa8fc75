"""Ids and names: what an id or a stream name says, shared by the model and the queue layer.

Pure (no Redis, no I/O but the clock and ``os.urandom``): ``model.py`` and ``queue/keys.py``
both import it, so the model never reaches up into ``queue/``.

Ids. An event is ``evt_<core>``, its jobs ``job_<core>.<n>`` (``job_<core>.<k>.<n>`` in shard k
> 0), a webhook ``wh_<core>`` (``wh_<core>.<k>`` in shard k > 0). A core is 20 characters of
lower-case Crockford base32: 10 of millisecond time, 10 of randomness, so ids sort by time.

Regions (docs/regions.md). In a deployment with ``[regions]``, a job id ends in ``~<region>``,
the region whose Redis holds the job and whose daemons deliver it: ``job_<core>.<n>~eu``. An id
without the suffix belongs to the region of whoever reads it, so every id minted before regions
(or without them) stays valid. ``~`` is unreserved in URLs and is not ``@``, which starts a
locator. A region name is ``[a-z][a-z0-9_]{0,15}``: safe in ids, keys, URLs and env names.
Webhook and event ids carry no region (the registry is in every region; ``Webhook.region``).

Names. A queue ``Q`` is three streams, one per priority: ``Q:high``, ``Q`` (normal) and ``Q:low``
(queue names never hold ``:``, ``model.check_queue``). A stream entry id (``sid``) starts with
the Redis server time (ms) at which it was added.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

PRIORITIES = ("high", "normal", "low")  # the order workers serve them in
#: The webhook id stored with a task job (real ones start ``wh_``); see queue/tasks.py.
TASK_WEBHOOK = "task"
#: The queues task jobs run on (tasks.py); no webhook and no ``delivery.queues`` names them.
TASK_QUEUES = ("maintenance", "analytics")
MAX_SHARDS = 1024

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_MASK_50 = (1 << 50) - 1
# ``.<k>`` names the shard when it is not 0
REGION_PATTERN = r"[a-z][a-z0-9_]{0,15}"
_REGION = re.compile(REGION_PATTERN)
_JOB_ID = re.compile(rf"job_[0-9a-z]{{20}}(?:\.[1-9]\d{{0,3}})?\.\d{{1,6}}(?:~{REGION_PATTERN})?")
_WEBHOOK_ID = re.compile(r"wh_[0-9a-z]{20}(?:\.[1-9]\d{0,3})?")
_SHARD_IN_ID = re.compile(
    rf"wh_[0-9a-z]{{20}}\.(\d+)|job_[0-9a-z]{{20}}\.(\d+)\.\d+(?:~{REGION_PATTERN})?"
)


# --- ids -------------------------------------------------------------------------------------


def _base32(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits as two characters


_RANDOM_CHUNK = 7 * 512  # os.urandom is a system call: read for 512 ids at a time
# An iterator over a list: one next() is one C call, so threads making ids at once (a Client
# per thread) never take the same value, as two steps (read, then delete) could.
_random: Iterator[int] = iter(())


def _forget_random() -> None:
    global _random  # noqa: PLW0603 - the module's buffer, replaced whole
    _random = iter(())


os.register_at_fork(after_in_child=_forget_random)  # a forked child draws its own bits


def _random_50() -> int:
    """50 random bits (os.urandom's), from a buffer refilled 512 ids at a time."""
    global _random
    value = next(_random, None)
    if value is None:
        chunk = os.urandom(_RANDOM_CHUNK)
        fresh = iter(
            [int.from_bytes(chunk[i : i + 7], "big") & _MASK_50 for i in range(0, _RANDOM_CHUNK, 7)]
        )
        value, _random = next(fresh), fresh
    return value


def _sortable_id() -> str:
    """20 characters: 10 of millisecond time, 10 of randomness (like a ULID); the same as
    ``_base32(ms, 10) + _base32(random, 10)``, two characters at a time."""
    value = (time.time_ns() // 1_000_000 & _MASK_50) << 50 | _random_50()
    pairs = _PAIRS
    return "".join(pairs[value >> shift & 1023] for shift in range(90, -1, -10))


def new_event_ids() -> tuple[str, str]:
    """An event id and the prefix of its jobs' ids (``job_<core>.`` + n)."""
    core = _sortable_id()
    return f"evt_{core}", f"job_{core}."


def event_id_of(job_id: str) -> str:
    """The id of the event a job delivers: jobs are ``job_<core>.n`` of ``evt_<core>``."""
    return "evt_" + job_id[4:].partition(".")[0]


def new_webhook_id(shards: int = 1) -> str:
    """A webhook id; with several shards it names the one its core hashes to."""
    core = _sortable_id()
    shard = shard_for(core, shards)
    return f"wh_{core}.{shard}" if shard else f"wh_{core}"


def shard_job_prefix(job_prefix: str, shard: int) -> str:
    """The prefix of an event's job ids in one shard: ``job_<core>.`` or ``job_<core>.<k>.``."""
    return f"{job_prefix}{shard}." if shard else job_prefix


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


def is_webhook_id(value: object) -> bool:
    return isinstance(value, str) and _WEBHOOK_ID.fullmatch(value) is not None


def is_region_name(value: object) -> bool:
    return isinstance(value, str) and _REGION.fullmatch(value) is not None


def region_of(job_id: str) -> str | None:
    """The region named in a job id (``job_<core>.<n>~eu`` -> ``eu``); None: no suffix, the
    reader's own region."""
    _, tilde, region = job_id.rpartition("~")
    return region if tilde else None


def with_region(job_id: str, region: str | None) -> str:
    """``job_id`` naming ``region`` (None: no suffix), whatever it named before."""
    local = job_id.partition("~")[0]
    return f"{local}~{region}" if region else local


def sid_ms(sid: str) -> int:
    """The Redis server time (ms) at which a stream entry was added."""
    return int(sid.partition("-")[0])


# --- shards ----------------------------------------------------------------------------------


def shard_for(core: str, shards: int) -> int:
    """The shard a new webhook with this id core is placed in."""
    return zlib.crc32(core.encode()) % shards


def shard_of(entity_id: str) -> int:
    """The shard of a (valid) webhook or job id: ``wh_<core>.<k>``, ``job_<core>.<k>.<n>``
    (a region suffix, ``~eu``, changes nothing: shard k of every region has the same tag)."""
    found = _SHARD_IN_ID.fullmatch(entity_id)
    return int(found.group(1) or found.group(2)) if found else 0


# --- queues and their streams ----------------------------------------------------------------


def stream_of(queue: str, priority: str) -> str:
    """The stream (``Q``, ``Q:high`` or ``Q:low``) that carries a queue's jobs of one priority.

    A queue is three streams, each with its own ready stream, delayed zset and consumer group;
    every function of ``queue/keys.py`` that takes a ``queue`` takes one of these stream names.
    """
    return queue if priority == "normal" else f"{queue}:{priority}"


def streams_of(queue: str) -> tuple[str, ...]:
    """A queue's streams, highest priority first."""
    return tuple(stream_of(queue, p) for p in PRIORITIES)


def queue_of(stream: str) -> str:
    return stream.partition(":")[0]


def priority_of(stream: str) -> str:
    return stream.partition(":")[2] or "normal"
