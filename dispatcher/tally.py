"""The worker's per-webhook, per-minute delivery counts, kept in memory between flushes.

``Outcomes.record`` notes each attempt here (a few dict operations, no I/O: it runs on the
delivery path); upkeep's control loop takes the counts each second and adds them to Redis
(``queue/stats.py``). Counts are the stored hash fields as they are written:

``a`` attempts, ``d`` delivered, ``f`` failed (attempts that did not deliver: a job retried
twice and then delivered counts 3 attempts, 2 failed, 1 delivered), ``l<b>`` attempts whose
duration fell in bucket ``b`` of ``histogram.py``, ``g<b>`` deliveries whose lag (from the
job's creation to its delivery) fell in bucket ``b``.
"""

from __future__ import annotations

from math import ceil, log

from dispatcher.histogram import GAMMA, MAX_BUCKET

ATTEMPTS = "a"
DELIVERED = "d"
FAILED = "f"
LATENCY = "l"
LAG = "g"
#: the field of each bucket, made once (no string is built per attempt)
LATENCY_FIELDS = tuple(f"{LATENCY}{b}" for b in range(MAX_BUCKET + 1))
LAG_FIELDS = tuple(f"{LAG}{b}" for b in range(MAX_BUCKET + 1))

#: histogram.bucket_of(ms) is ceil(log(ms) * _PER_LOG) for ms > 1: written out below, where a
#: call would cost as much as the rest (tests/test_stats.py checks that both agree)
_PER_LOG = 1 / log(GAMMA)

#: minute -> webhook id -> field -> count
Counts = dict[int, dict[str, dict[str, int]]]


class Tally:
    """Counts per minute and webhook until the next flush takes them."""

    __slots__ = ("minutes",)

    def __init__(self) -> None:
        self.minutes: Counts = {}

    def attempt(
        self, webhook_id: str, minute: int, duration_ms: float, lag_ms: float | None
    ) -> None:
        """One attempt of ``duration_ms``; ``lag_ms`` is the job's lag when it delivered,
        None when the attempt failed."""
        hooks = self.minutes.get(minute)
        if hooks is None:
            hooks = self.minutes[minute] = {}
        counts = hooks.get(webhook_id)
        if counts is None:
            counts = hooks[webhook_id] = {ATTEMPTS: 0, DELIVERED: 0, FAILED: 0}
        counts[ATTEMPTS] += 1
        b = ceil(log(duration_ms) * _PER_LOG) if duration_ms > 1.0 else 0
        field = LATENCY_FIELDS[b if b <= MAX_BUCKET else MAX_BUCKET]  # noqa: FURB136 - no call
        counts[field] = counts.get(field, 0) + 1
        if lag_ms is None:
            counts[FAILED] += 1
            return
        counts[DELIVERED] += 1
        b = ceil(log(lag_ms) * _PER_LOG) if lag_ms > 1.0 else 0
        field = LAG_FIELDS[b if b <= MAX_BUCKET else MAX_BUCKET]  # noqa: FURB136 - no call
        counts[field] = counts.get(field, 0) + 1

    def take(self) -> Counts:
        """The counts so far; the tally starts again empty."""
        taken, self.minutes = self.minutes, {}
        return taken

    def give_back(self, taken: Counts, *, oldest_minute: int) -> None:
        """Add counts a flush could not write back in, dropping minutes before
        ``oldest_minute`` (Redis would have expired them): memory stays bounded however long
        Redis is away."""
        for minute, hooks in taken.items():
            if minute < oldest_minute:
                continue
            mine = self.minutes.setdefault(minute, {})
            for webhook_id, fields in hooks.items():
                counts = mine.setdefault(webhook_id, {})
                for name, value in fields.items():
                    counts[name] = counts.get(name, 0) + value
