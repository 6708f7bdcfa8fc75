"""How many of this process's sender slots each webhook may hold: the adaptive default cap.

Every webhook (endpoint) gets a limit on its attempts in flight in this process. It starts at
an eighth of the pool and is earned like a TCP congestion window: each fast success while
the webhook uses at least half its limit adds one slot (so the limit doubles per round trip
and a lone healthy webhook soon has the whole pool), while a timeout, a refused or broken
connection or an answer far slower than usual halves it, down to ``MIN_LIMIT``. An attempt
out far longer than the webhook's usual latency (8 times it, and at least 1 s) is stuck: it
keeps its slot, and it shrinks the room of the others in proportion, so the webhook may fill
only the share of its limit that is still answering. An endpoint whose attempts all hang
starts nothing more; one slow answer among many (an ordinary p99 tail) costs about one slot,
not the endpoint's throughput. And the last eighth of the pool is kept for endpoints that
answer fast: a slow one (usually over 0.1 s) never takes it. So an endpoint that hangs,
refuses or slows down holds few slots, or at least never all of them, and the others keep
theirs.

Jobs beyond a webhook's limit wait in Redis, in the webhook's waiting set, holding no slot, and
go back to their queue as the webhook's attempts end (``queue/waiting.py``). Only a job refused
a share of an endpoint this process is not sending to at all (no attempt here would release it)
goes back with a due time instead (``Endpoint.defer``), spaced at the pace the webhook is
being served.

The explicit, cluster-wide limits a user sets on a webhook (``rate_limit``, ``max_in_flight``)
are kept in Redis by ``queue/admission.py``; this module is local and free of round trips.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from dataclasses import dataclass
from typing import cast

MIN_LIMIT = 2
START_FRACTION = 8  # a new webhook starts with concurrency // START_FRACTION slots
STUCK_FLOOR_S = 1.0  # an attempt is stuck once out this long and STUCK_MULTIPLE times the
STUCK_MULTIPLE = 8.0  # webhook's usual latency: a tail of a few hundred ms is not a hang
HANGING_SHARE = 0.5  # a webhook with this share of its attempts stuck is hanging
LATENCY_WEIGHT = 0.1  # of the newest success in the moving average
SLOW_S = 0.1  # an endpoint whose answers usually take longer holds its slots long
RESERVE_FRACTION = 8  # the last concurrency // 8 free slots are kept for the fast endpoints
MIN_WAIT_S = 0.02
HORIZON_S = 5.0  # deferrals are spaced no further ahead than this: a recovered endpoint
# gets its backlog back within seconds (a long hang is the breaker's to park, not ours)
IDLE_FORGET_S = 300.0
_SENT = functools.partial(operator.is_not, None)  # an attempt on the wire has a start time


@dataclass(frozen=True, slots=True)
class Deferral:
    delay_s: float
    reason: str  # "endpoint_capacity"


class Endpoint:
    """One webhook's share of this process's pool."""

    __slots__ = ("ceiling", "earliest", "horizon", "latency_s", "limit", "seen", "started")

    def __init__(self, start: int, ceiling: int) -> None:
        self.limit = float(start)
        self.ceiling = ceiling
        # job id -> monotonic time its attempt started; None while it waits for a free lane
        self.started: dict[str, float | None] = {}
        # No attempt on the wire started before this (a lower bound: entries only leave, or
        # join later), so `room` knows none is stuck without looking at each.
        self.earliest = math.inf
        self.latency_s: float | None = None  # moving average of successful attempts
        self.horizon = 0.0  # monotonic time up to which deferrals are already spaced
        self.seen = time.monotonic()

    @property
    def slow(self) -> bool:
        return self.latency_s is not None and self.latency_s > SLOW_S

    def stuck_after_s(self) -> float:
        return max(STUCK_FLOOR_S, STUCK_MULTIPLE * (self.latency_s or 0.0))

    def stuck(self, now: float) -> tuple[int, int]:
        """(stuck, sending): attempts out far longer than this webhook's usual latency, of
        those on the wire. A job waiting for a lane says nothing of the endpoint."""
        cutoff = now - self.stuck_after_s()
        # counted at C speed: this runs as each attempt ends, over up to a pool of attempts
        on_wire = cast("list[float]", list(filter(_SENT, self.started.values())))
        self.earliest = min(on_wire, default=math.inf)
        return sum(map(cutoff.__gt__, on_wire)), len(on_wire)

    def hanging(self, now: float) -> bool:
        """Whether at least ``HANGING_SHARE`` of the attempts on the wire are stuck."""
        stuck, sending = self.stuck(now)
        return stuck > 0 and stuck >= HANGING_SHARE * sending

    def room(self, now: float) -> int:
        """Attempts this webhook may start now: its limit, shrunk by the share of its attempts
        that are stuck (all stuck: nothing more starts; the stuck ones keep their slots)."""
        if self.earliest >= now - self.stuck_after_s():  # none stuck: no need to count
            return int(self.limit) - len(self.started)
        stuck, sending = self.stuck(now)
        limit = self.limit if not stuck else self.limit * (1 - stuck / sending)
        return int(limit) - len(self.started)

    def defer(self, now: float, timeout_s: float) -> float:
        """A delay for one job beyond the limit: the next free place in this webhook's pace."""
        spacing = (self.latency_s or MIN_WAIT_S) / max(self.limit, 1.0)
        if self.hanging(now):
            spacing = timeout_s / max(self.limit, 1.0)  # slots free only as attempts time out
        start = max(self.horizon, now + MIN_WAIT_S)
        self.horizon = min(start + spacing, now + HORIZON_S)
        return self.horizon - now

    def begin(self, job_id: str, now: float) -> None:
        """The job holds one of this webhook's places; its attempt has not started yet."""
        self.started[job_id] = None
        self.seen = now

    def sending(self, job_id: str, now: float) -> None:
        """Its attempt starts now (a lane took it)."""
        if job_id in self.started:
            self.started[job_id] = now
            self.earliest = min(self.earliest, now)

    def release(self, job_id: str) -> None:
        """The attempt ended without a word about the endpoint (the egress proxy failed):
        its place frees, the limit and latency stay as they were."""
        self.started.pop(job_id, None)

    def end(self, job_id: str, duration_s: float, *, answered: bool, ok: bool) -> None:
        """Adapt the limit to how the attempt went (``answered``: a complete HTTP answer)."""
        busy = len(self.started)
        self.started.pop(job_id, None)
        if not answered:  # timed out, refused, reset
            self.limit = max(float(MIN_LIMIT), self.limit / 2)
            return
        slow = self.latency_s is not None and duration_s > self.stuck_after_s()
        if ok:
            avg = self.latency_s
            self.latency_s = (
                duration_s if avg is None else avg + LATENCY_WEIGHT * (duration_s - avg)
            )
        if slow:
            self.limit = max(float(MIN_LIMIT), self.limit / 2)
        elif ok and busy >= self.limit / 2:
            self.limit = min(float(self.ceiling), self.limit + 1)


class Pool:
    """The endpoints of one worker process, by webhook id."""

    def __init__(self, concurrency: int, timeout_s: float) -> None:
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.start = max(MIN_LIMIT, concurrency // START_FRACTION)
        self.reserve = concurrency // RESERVE_FRACTION
        self.endpoints: dict[str, Endpoint] = {}

    def endpoint(self, webhook_id: str) -> Endpoint:
        found = self.endpoints.get(webhook_id)
        if found is None:
            found = self.endpoints[webhook_id] = Endpoint(self.start, self.concurrency)
        return found

    def cut(self, endpoint: Endpoint) -> bool:
        """Whether the endpoint's limit is below the one every webhook starts with: timeouts,
        refusals or slow answers halved it more than successes earned back."""
        return endpoint.limit < self.start

    def forget_idle(self, now: float) -> int:
        """Drop endpoints with nothing in flight and no attempt for ``IDLE_FORGET_S``; returns
        how many. Run every second by the worker, it bounds the pool to the webhooks this
        process attempted within that time, plus those with jobs in flight."""
        idle = [
            wid
            for wid, ep in self.endpoints.items()
            if not ep.started and now - ep.seen > IDLE_FORGET_S
        ]
        for wid in idle:
            del self.endpoints[wid]
        return len(idle)
