"""The job's storage format: the one place that says how a job is kept in Redis.

A job lives in one of three forms (``K`` the shard's key base, see keys.py):

The entry. A job that was never attempted travels inline in its ready-stream entry
(``K:q:S:ready``): ``j`` job id, ``w`` webhook id, ``t`` tenant id, ``e`` event type, ``p``
payload; the stream ``S`` tells its queue and priority, the entry id its creation time. Stream
entries pack tightly, so a queued job costs little more than its payload (see bench/). An entry
that refers to a record carries only ``j`` and ``w``.

The locator. Meanwhile the ``jobs`` hash holds only a locator for it, which names the entry:
``@<delta>-<seq>``, then ``,<stream>`` unless the stream is ``default`` (the default queue's
normal priority). The entry id is ``<ms>-<seq>`` where ``ms`` is the job id's own time (the
first ten characters of its core, ids.py) plus ``delta``; both numbers are written in base 36
(``0-9a-z``, a ``-`` before a negative delta). ``delta`` is the time from choosing the id to
adding the entry, a few ms when the publisher's clock agrees with Redis's. So a locator is a
handful of bytes (``@3-0``, ``@1k-b``): the hash keeps one per queued job, and a value of up to
6 bytes takes Redis's smallest allocation (deltas under 1.3 s, fewer than 1,296 entries added
in the same ms).
A job held while its webhook ``W`` is paused keeps this form (pauses.py, lua/_held.lua): its
entry, less ``w``, moves to the same id of the held stream ``K:q:W|S:ready``, and its locator
names the stream ``W|S``. Put back in ``S`` on resume, its entry adds ``wr`` (``paused``) and
``c``, the entry id its publish got: its ``created_at``, and its place if held again.
Releases before this one wrote ``@<stream> <entry id>`` (an ``@``, the stream, one space, the
entry id); those are read as before. A locator never holds a newline, and only the older form
holds a space.

The record. Once a job has an outcome, is scheduled, or is taken over from a dead worker, the
``jobs`` hash holds its full record: a compact meta JSON object, a newline, then the payload
bytes exactly as published (a finished delivered job keeps no payload: the record ends at the
newline; settle.lua keeps the payload ``jobs.payload_retention_s`` in a key of its own,
keys.py ``payload``, for a retry). A record always starts with ``{``, a locator with ``@``.
Lua scripts decode only the meta part, so a payload's numbers and empty objects are never
re-encoded by cjson. Meta keys are short:

``w`` webhook id, ``t`` tenant id, ``e`` event type, ``q`` stream, ``s`` stored state,
``a`` attempts made, ``k`` stalls (workers that died on it),
``c`` created ms, ``p`` last attempt started ms, ``f`` finished ms, ``n`` next attempt ms,
``le`` last error, ``ls`` last HTTP status, ``sid`` ready-stream entry id, ``d`` DLQ entry id,
``r`` dead reason, ``wr`` what a waiting job waits for (``rate_limit``, ``max_in_flight``,
``endpoint_capacity``, ``breaker``; ``ordering`` for a job queued behind its FIFO lane's head),
``rv`` its reserved rate slot (ms), ``ol`` the key of its FIFO lane (keys.py ``lane``: only a
job of a webhook with ``ordering: fifo``, which is always a record, never a locator),
``h`` attempts ``[at_ms, status, duration_ms, error, late]`` (the last ``HISTORY_LIMIT``; cjson
writes an empty list as ``{}``).

The Lua side reads and writes them through ``lua/_record.lua``, which scripts.py puts in place
of the line ``-- include: _record.lua`` of each script that needs it: ``is_locator``,
``parse_locator`` (both forms; it needs the job id), ``split_record`` (meta table and the
rest, ``'\\n' .. payload``), ``record_meta``, ``make_locator``, ``make_record``,
``requeue`` and ``requeue_oldest`` (jobs waiting without an attempt back at the end of their
queue).
``publish.lua`` writes locators and records; ``reclaim.lua`` turns a locator and its entry
into a record, as ``from_entry`` does here.
"""

from __future__ import annotations

from typing import Any

import orjson

from dispatcher.ids import event_id_of, priority_of, sid_ms
from dispatcher.model import Job, JobState

HISTORY_LIMIT = 50
_LOCATOR = b"@"
_SEP = b"\n"
#: The stream a locator names by saying nothing: the default queue's, at normal priority.
SHORT_STREAM = "default"
#: Between the webhook and the ready stream in a held stream's name (lua/_held.lua).
HELD_SEP = "|"
_ID_DIGITS = {c: n for n, c in enumerate("0123456789abcdefghjkmnpqrstvwxyz")}
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


# --- records ---------------------------------------------------------------------------------


def encode(job: Job, *, keep_payload: bool = True) -> bytes:  # noqa: C901 - flat for speed
    """The job's record; without ``keep_payload`` it ends at the newline."""
    meta: dict[str, Any] = {
        "w": job.webhook_id,
        "t": job.tenant_id,
        "e": job.event_type,
        "q": job.stream,
        "s": job.state.value,
        "a": job.attempt,
        "k": job.stalls,
        "c": job.created_at_ms,
    }
    # the optional keys, in this order, when set (one test each: this runs once per outcome)
    if job.processed_at_ms is not None:
        meta["p"] = job.processed_at_ms
    if job.finished_at_ms is not None:
        meta["f"] = job.finished_at_ms
    if job.next_attempt_at_ms is not None:
        meta["n"] = job.next_attempt_at_ms
    if job.last_error is not None:
        meta["le"] = job.last_error
    if job.last_status is not None:
        meta["ls"] = job.last_status
    if job.sid is not None:
        meta["sid"] = job.sid
    if job.dlq_id is not None:
        meta["d"] = job.dlq_id
    if job.reason is not None:
        meta["r"] = job.reason
    if job.waiting is not None:
        meta["wr"] = job.waiting
    if job.reserved_ms is not None:
        meta["rv"] = job.reserved_ms
    if job.lane is not None:
        meta["ol"] = job.lane
    if job.history:
        meta["h"] = job.history[-HISTORY_LIMIT:]
    return orjson.dumps(meta) + _SEP + (job.payload if keep_payload else b"")


def decode(job_id: str, record: bytes) -> Job:
    """Parse a stored record; raises ValueError (or KeyError) when it is not one."""
    meta, sep, payload = record.partition(_SEP)
    if not sep:
        raise ValueError("job record has no payload separator")
    return _from_meta(job_id, orjson.loads(meta), payload)


def decode_meta(job_id: str, meta: bytes) -> Job:
    """A job from the meta part of its record alone (its payload left empty)."""
    return _from_meta(job_id, orjson.loads(meta), b"")


def try_decode(job_id: str, record: bytes | None) -> Job | None:
    """The job of a full record; None when it is gone, a locator, or unreadable."""
    if record is None or is_locator(record):
        return None
    try:
        return decode(job_id, record)
    except (ValueError, KeyError, TypeError):
        return None


def _from_meta(job_id: str, m: dict[str, Any], payload: bytes) -> Job:
    history = m.get("h")
    return Job(
        id=job_id,
        webhook_id=m["w"],
        tenant_id=m["t"],
        event_type=m["e"],
        stream=m["q"],
        event_id=event_id_of(job_id),
        state=JobState(m["s"]),
        attempt=int(m.get("a", 0)),
        stalls=int(m.get("k", 0)),
        created_at_ms=int(m["c"]),
        payload=payload,
        priority=priority_of(m["q"]),
        processed_at_ms=m.get("p"),
        finished_at_ms=m.get("f"),
        next_attempt_at_ms=m.get("n"),
        last_error=m.get("le"),
        last_status=m.get("ls"),
        sid=m.get("sid"),
        dlq_id=m.get("d"),
        reason=m.get("r"),
        waiting=m.get("wr"),
        reserved_ms=m.get("rv"),
        lane=m.get("ol"),
        history=history if isinstance(history, list) else [],  # cjson writes [] as {}
    )


# --- the locator of a job never attempted ----------------------------------------------------


def locator(stream: str, sid: str, job_id: str) -> bytes:
    """What the jobs hash holds for a job whose data travels in its ready-stream entry
    (the form publish.lua writes through ``make_locator``)."""
    ms, _, seq = sid.partition("-")
    text = f"@{_b36(int(ms) - id_ms(job_id))}-{_b36(int(seq))}"
    return (text if stream == SHORT_STREAM else f"{text},{stream}").encode()


def is_locator(raw: bytes) -> bool:
    return raw.startswith(_LOCATOR)


def parse_locator(raw: bytes, job_id: str) -> tuple[str, str]:
    """The stream and the entry id a locator names (either form); raises ValueError when it
    is garbled."""
    text = raw[1:].decode()
    stream, space, sid = text.partition(" ")
    if space:  # written before the short form: "@<stream> <entry id>"
        return stream, sid
    rel, comma, stream = text.partition(",")
    delta, dash, seq = rel.rpartition("-")
    if not dash or not delta or delta == "-" or (comma and not stream):
        raise ValueError(f"not a locator: {raw!r}")
    stream = stream if comma else SHORT_STREAM
    return stream, f"{id_ms(job_id) + int(delta, 36)}-{int(seq, 36)}"


def held_stream(stream: str) -> tuple[str, str] | None:
    """The webhook and the ready stream of a held stream's name ``<webhook id>|<stream>``
    (what the locator of a job held in the compact form names, see lua/_held.lua); None for
    any other stream."""
    webhook_id, sep, ready = stream.partition(HELD_SEP)
    return (webhook_id, ready) if sep else None


def _b36(n: int) -> str:
    """A whole number in base 36, lower case, ``-`` first when negative."""
    if n < 0:
        return "-" + _b36(-n)
    digits = ""
    while True:
        n, d = divmod(n, 36)
        digits = _B36[d] + digits
        if not n:
            return digits


def id_ms(job_id: str) -> int:
    """The time in a job id (``job_<core>...``): its core's first ten characters, in ms."""
    ms = 0
    for char in job_id[4:14]:
        ms = ms * 32 + _ID_DIGITS[char]
    return ms


# --- the ready-stream entry ------------------------------------------------------------------


def from_entry(job_id: str, stream: str, sid: str, fields: dict[bytes, bytes]) -> Job:
    """A job never attempted yet, whose data travels inline in its ready-stream entry.

    Raises KeyError (or ValueError) when a field is missing or garbled.
    """
    return Job(
        id=job_id,
        webhook_id=fields[b"w"].decode(),
        tenant_id=fields[b"t"].decode(),
        event_type=fields[b"e"].decode(),
        stream=stream,
        event_id=event_id_of(job_id),
        state=JobState.QUEUED,
        attempt=0,
        stalls=0,
        # put back after a pause: 'c' is the entry id its publish got
        created_at_ms=sid_ms(fields[b"c"].decode() if b"c" in fields else sid),
        payload=fields[b"p"],
        priority=priority_of(stream),
        sid=sid,
        waiting=fields[b"wr"].decode() if b"wr" in fields else None,  # put back: "paused"
    )


def is_inline(fields: dict[bytes, bytes]) -> bool:
    """Whether an entry carries its job's data (else it refers to the job's record)."""
    return b"p" in fields
