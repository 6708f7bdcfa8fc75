"""A stateful, randomized model test of traffic control and reclaim across two workers.

The second state machine of the queue's model test (``tests/test_model.py``): Hypothesis drives
two real ``Worker`` objects (their claim, reclaim, admission, lease, record and settle logic,
without their background loops; a lane is a rule) with few lanes, against a real redis-server,
for webhooks with ``max_in_flight`` 1 and 2 and one without. Rules: publish, a read loop's
turn, a lane starting an attempt (its lease renewed when it waited), an attempt ending or
crashing, settle, a reclaim pass (``Worker.reclaim``, lanes full or not), a worker freezing and
coming back (its late outcomes are then stale), time passing (the stall timeout and the lease
lifetime: a frozen worker's entries and leases age, a live worker keeps the claims it holds
fresh), pause and resume of the queue, promote and the waiting tick.

Invariants, at every step: no webhook has more attempts in flight than its ``max_in_flight``
(attempts a live worker started and has not ended, and a frozen worker's until its leases ran
out); each admitted attempt of a live worker holds its lease (a stale settle never releases
another worker's); a reclaim pass never takes more than its worker's free lanes, never takes a
job a live worker holds (a worker thawed after its stall timeout is live for the claims it
comes back with once its reclaim loop kept them fresh: ``thaw``), counts a stall only for a
takeover from another worker, and hands nothing to lanes while the queue is paused; every job
is in exactly one place (its stream, a delayed or waiting set, done, the DLQ). After a final
drain every job is delivered or dead.

``make test`` runs it short and seeded (``traffic-ci``); ``make test-model`` runs it long
(``MODEL_EXAMPLES``, ``MODEL_STEPS``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from dataclasses import replace
from logging import CRITICAL
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
import pytest
import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dispatcher import Client
from dispatcher.config import DeliveryConfig, JobsConfig
from dispatcher.delivery import Worker, _Rotation
from dispatcher.metrics import Metrics
from dispatcher.queue import admission, control, delays, streams
from dispatcher.queue.keys import GROUP, streams_of
from dispatcher.queue.store import Store
from dispatcher.sender import Outcome, Sender
from dispatcher.ssrf import AddressPolicy
from tests.helpers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator

    from dispatcher.gate import Work as _Work

# --- settings -------------------------------------------------------------------------------------

STEPS = int(os.environ.get("MODEL_STEPS", "30"))
LONG = "MODEL_EXAMPLES" in os.environ
_COMMON: dict[str, Any] = {
    "stateful_step_count": STEPS,
    "database": None,
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}
# 90 seeded examples (120 before; the same first ones): every rule and variant, and each
# counted event (lease refused, stale settle, reclaim with lanes full or paused, takeover,
# waiting job) many times; the long run explores (make test-model).
settings.register_profile("traffic-ci", max_examples=90, derandomize=True, **_COMMON)
settings.register_profile(
    "traffic-long",
    max_examples=int(os.environ.get("MODEL_EXAMPLES", "5000")),
    derandomize=False,
    **_COMMON,
)

PREFIX = "traffic"
QUEUE = "default"
STREAMS = streams_of(QUEUE)
#: One tenant per webhook: max_in_flight 1, 2, and none.
CAPS: dict[str, int | None] = {"one": 1, "two": 2, "free": None}
WORKERS = ("traffic-a:201:1700000000001", "traffic-b:202:1700000000002")
LANES = 2
STALL_S = 60.0  # never reached by the clock in a run: time passes only by the rule below
LONG_AGO_MS = 3_600_000  # how idle an entry is once its stall timeout passed
MAX_JOBS = 40
_RUN = ("examples", "steps")


def _outcome(status: int) -> Outcome:
    return Outcome(status, None if status < 300 else f"HTTP {status}", 1.0, None)


def _lease_member(job_id: str, holder: str) -> str:
    """A lease's member; before leases were keyed by holder, the job id alone."""
    member = getattr(admission, "lease_member", None)
    return job_id if member is None else str(member(job_id, holder))


def _free(worker: Worker) -> int:
    """The claims the worker may still make (before one claim budget: its free lanes)."""
    free = getattr(worker, "_free", None)
    if free is not None:
        return int(free())
    return 0 if worker._unsettled > LANES else LANES - worker._busy


def _raw(store: Store) -> Any:
    """The store's Redis client for raw reads, untyped: redis-py types its replies as bytes
    or str, and here they are bytes."""
    return store.redis


class TrafficMachine(RuleBasedStateMachine):
    server: ClassVar[RedisServer]
    #: examples, steps and how often the situations the rules aim at came up, for the report
    counts: ClassVar[defaultdict[str, int]] = defaultdict(int)

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store: Store | None = None
        self.client: Client | None = None
        self.workers: list[Worker] = []
        self.hooks: dict[str, str] = {}  # tenant -> webhook id
        self.cap_of: dict[str, int | None] = {}  # webhook id -> max_in_flight
        self.jobs: dict[str, str] = {}  # job id -> webhook id
        self.held: list[list[_Work]] = [[] for _ in WORKERS]  # in the inbox, not started
        self.started: list[list[_Work]] = [[] for _ in WORKERS]  # on the wire
        self.frozen = [False for _ in WORKERS]
        self.expired = [False for _ in WORKERS]  # frozen, and its stall timeout has passed
        # jobs a thawed worker held when it came back, their entries still idle past the stall
        # timeout until its reclaim loop keeps them fresh again: up for takeover (see `thaw`)
        self.aged: list[set[str]] = [set() for _ in WORKERS]
        self.paused = False
        TrafficMachine.counts["examples"] += 1

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    @property
    def db(self) -> Store:
        assert self.store is not None
        return self.store

    @property
    def cl(self) -> Client:
        assert self.client is not None
        return self.client

    # --- set-up and tear-down ---------------------------------------------------------------------

    @initialize()
    def set_up(self) -> None:
        self.run(self._set_up())

    async def _set_up(self) -> None:
        self.store = Store.open(self.server.url, prefix=PREFIX)
        await self.store.redis.flushall()
        self.client = Client(Store.open(self.server.url, prefix=PREFIX), dlq_retention_s=0)
        for tenant, cap in CAPS.items():
            fields: dict[str, Any] = {} if cap is None else {"max_in_flight": cap}
            hook = await self.client.create_webhook(
                tenant, "https://hooks.example.com/in", **fields
            )
            self.hooks[tenant] = hook["id"]
            self.cap_of[hook["id"]] = cap
        cfg = DeliveryConfig(
            concurrency=LANES,
            timeout_s=1.0,
            stall_timeout_s=STALL_S,
            max_attempts=2,
            backoff_base_s=0.002,
            backoff_cap_s=0.004,
        )
        sender = Sender(
            timeout_s=1.0,
            concurrency=1,
            policy=AddressPolicy(allow_private=False, allowed_cidrs=()),
            user_agent="dispatcher/model",
        )
        for consumer in WORKERS:
            worker = Worker(self.store, sender, cfg, JobsConfig(), Metrics(), consumer=consumer)
            if hasattr(worker, "_rotations"):  # what its read loop's start sets up
                worker._rotations[self.store.keys.shard, QUEUE] = _Rotation(QUEUE)
            self.workers.append(worker)
        for s in STREAMS:
            await streams.ensure_group(self.store, s)

    def teardown(self) -> None:
        try:
            if self.store is not None:
                self.run(self._drain())
        finally:
            self.run(self._close())
            self.loop.close()

    async def _close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.store is not None:
            await self.store.close()

    def _live(self, w: int) -> int | None:
        """Worker ``w`` among the live ones (None when all are frozen)."""
        live = [i for i, frozen in enumerate(self.frozen) if not frozen]
        return live[w % len(live)] if live else None

    # --- publishing -------------------------------------------------------------------------------

    @precondition(lambda self: len(self.jobs) < MAX_JOBS)
    @rule(tenant=st.sampled_from(tuple(CAPS)), n=st.integers(1, 6))
    def publish(self, tenant: str, n: int) -> None:
        self.run(self._publish(tenant, n))

    async def _publish(self, tenant: str, n: int) -> None:
        answers = await self.cl.publish_many(
            [{"tenant_id": tenant, "event_type": "a.b", "payload": {"i": i}} for i in range(n)]
        )
        for answer in answers:
            assert isinstance(answer, dict), answer
            [job] = answer["jobs"]
            self.jobs[job["id"]] = self.hooks[tenant]

    # --- the workers ------------------------------------------------------------------------------

    def _take_inbox(self, w: int) -> list[_Work]:
        inbox = self.workers[w]._inbox
        works = []
        while not inbox.empty():
            works.append(inbox.get_nowait())
            inbox.task_done()
        self.held[w] += works
        return works

    def _lane_done(self, w: int, work: _Work) -> None:
        """What a lane does when its delivery ends (recorded, refused its lease, or crashed)."""
        worker = self.workers[w]
        worker.pool.endpoint(work.webhook.id).started.pop(work.job.id, None)
        release = getattr(worker, "_release", None)
        if release is not None:
            release(work.claim)
        worker._busy -= 1

    async def _ready(self, worker: Worker) -> bool:
        """Whether a read would find work without blocking: new entries, or entries idle past
        the stall timeout that a reclaim pass left to its read loop."""
        redis = self.db.redis
        for s in STREAMS:
            key = self.db.keys.ready(s)
            for group in await redis.xinfo_groups(key):
                last = group["last-delivered-id"].decode()
                if await redis.xrange(key, f"({last}", "+", count=1):
                    return True
            idle = int(STALL_S * 1000)
            if (self.db.keys.shard, s) not in getattr(worker, "_stalled", ()):
                continue
            if await redis.xpending_range(key, GROUP, "-", "+", 1, idle=idle):
                return True
        return False

    @rule(w=st.integers(0, len(WORKERS) - 1))
    def read(self, w: int) -> None:
        """A read loop's turn: claims what the worker's free lanes can start (stalled jobs
        that a reclaim pass had no lanes for first, where the worker keeps them)."""
        i = self._live(w)
        if i is not None and not self.paused:
            self.run(self._read(i))

    async def _read(self, w: int) -> None:
        worker = self.workers[w]
        if _free(worker) <= 0 or not await self._ready(worker):
            return  # the loop waits for room or for a job (a blocking read)
        busy = worker._busy
        reserve = getattr(worker, "_reserve", None)
        budget = reserve(256) if reserve is not None else _free(worker)
        async with asyncio.timeout(5):
            await worker._read_once(self.db, QUEUE, budget)
        self._take_inbox(w)
        assert worker._busy <= LANES, f"a read took {worker._busy - busy}, over its lanes"

    @precondition(lambda self: any(self.held))
    @rule(w=st.integers(0, len(WORKERS) - 1), pick=st.integers(0, 100), waited=st.booleans())
    def start(self, w: int, pick: int, waited: bool) -> None:
        """A lane starts an attempt; ``waited``: the job waited for the lane past the time a
        lease is renewed at its start."""
        holders = [i for i, h in enumerate(self.held) if h and not self.frozen[i]]
        if holders:
            self.run(self._start(holders[w % len(holders)], pick, waited=waited))

    async def _start(self, w: int, pick: int, *, waited: bool) -> None:
        worker = self.workers[w]
        work = self.held[w].pop(pick % len(self.held[w]))
        if waited and hasattr(work, "admitted_at"):
            work = replace(work, admitted_at=-1e9)
        holds = getattr(worker, "_lease_holds", None)
        if work.leased and holds is not None and not await holds(work):
            TrafficMachine.counts["lease_refused"] += 1
            self._lane_done(w, work)  # it waits for room again, without an attempt
            return
        worker.pool.endpoint(work.webhook.id).sending(work.job.id, time.monotonic())
        self.started[w].append(work)

    @precondition(lambda self: any(self.started))
    @rule(w=st.integers(0, len(WORKERS) - 1), pick=st.integers(0, 100),
          status=st.sampled_from((200, 200, 500)), crash=st.booleans())  # fmt: skip
    def finish(self, w: int, pick: int, status: int, crash: bool) -> None:
        """An attempt ends: answered ``status`` (the worker queues the outcome) or crashed (its
        entry stays pending, its lease runs out)."""
        holders = [i for i, s in enumerate(self.started) if s and not self.frozen[i]]
        if not holders:
            return
        i = holders[w % len(holders)]
        work = self.started[i].pop(pick % len(self.started[i]))
        worker = self.workers[i]
        if not crash:
            worker._record(work, _outcome(status), worker.store.clock.now_ms())
        self._lane_done(i, work)

    @precondition(lambda self: any(not w._settle_queue.empty() for w in self.workers))
    @rule(w=st.integers(0, len(WORKERS) - 1))
    def settle(self, w: int) -> None:
        ready = [
            i
            for i, worker in enumerate(self.workers)
            if not worker._settle_queue.empty() and not self.frozen[i]
        ]
        if ready:
            self.run(self._settle(ready[w % len(ready)]))

    async def _settle(self, w: int) -> None:
        """The settler's batch, written as ``_settle_until_written`` does, once."""
        worker = self.workers[w]
        batch = []
        while not worker._settle_queue.empty():
            batch.append(worker._settle_queue.get_nowait())
            worker._settle_queue.task_done()
        by_queue: dict[str, list[Any]] = {}
        for item in batch:
            by_queue.setdefault(item.claim.queue, []).append(item)
        for items in by_queue.values():
            stale = await streams.settle(self.db, worker.consumer, items)
            TrafficMachine.counts["stale_settled"] += len(stale)
        worker._unsettled -= len(batch)

    @rule(w=st.integers(0, len(WORKERS) - 1))
    def reclaim(self, w: int) -> None:
        """A reclaim pass of a live worker, whatever its free lanes (none when its inbox is
        full)."""
        i = self._live(w)
        if i is not None:
            self.run(self._reclaim(i))

    async def _pending(self) -> dict[str, tuple[str, str]]:
        """job id -> (stream, consumer) of every pending entry."""
        found: dict[str, tuple[str, str]] = {}
        for s in STREAMS:
            key = self.db.keys.ready(s)
            pending = await _raw(self.db).xpending_range(key, GROUP, "-", "+", 10_000)
            sids = [p["message_id"] for p in pending]
            owners = {p["message_id"]: p["consumer"].decode() for p in pending}
            for sid in sids:
                entry = await _raw(self.db).xrange(key, sid, sid)
                if entry:
                    found[entry[0][1][b"j"].decode()] = (s, owners[sid])
        return found

    async def _stalls(self) -> dict[str, int]:
        records = await _raw(self.db).hgetall(self.db.keys.jobs)
        stalls = {}
        for job_id, raw in records.items():
            if not raw.startswith(b"@"):
                stalls[job_id.decode()] = int(orjson.loads(raw.partition(b"\n")[0]).get("k", 0))
            else:
                stalls[job_id.decode()] = 0
        return stalls

    async def _reclaim(self, w: int) -> None:
        worker = self.workers[w]
        free = LANES - worker._busy
        busy = worker._busy
        owners = await self._pending()
        before = await self._stalls()
        unsettled = worker._unsettled
        taken = 0
        for stream in worker.streams:
            taken += await worker.reclaim(stream)
        works = self._take_inbox(w)
        after = await self._stalls()
        # the jobs that live workers hold, with the consumer whose entry they hold (not another
        # worker's claims that it thawed with, still idle past the stall timeout: `thaw`)
        live = {
            (work.job.id, self.workers[i].consumer)
            for i in range(len(WORKERS))
            if not self.expired[i]
            for work in self.held[i][: len(self.held[i]) - (len(works) if i == w else 0)]
            + self.started[i]
            if i == w or work.job.id not in self.aged[i]
        }
        self.aged[w] = set()  # its pass kept the claims it holds fresh first
        live_consumers = {
            self.workers[i].consumer for i in range(len(WORKERS)) if not self.expired[i]
        }
        problems = []
        if self.paused and (taken or works):
            problems.append(f"a paused queue's reclaim handed {len(works)} jobs to lanes")
        if worker._busy > LANES or (unsettled <= LANES and len(works) > max(free, 0)):
            problems.append(f"reclaim took {len(works)} jobs with {free} free lanes of {LANES}")
        settled = worker._unsettled - unsettled  # taken over, then waiting, dead or poison
        if taken < len(works) or worker._busy - busy != len(works) or settled < 0:
            problems.append(f"reclaimed {taken}: {len(works)} handed to lanes")
        reclaimed = {job for job, (_, owner) in owners.items() if after.get(job) != before.get(job)}
        for job_id in reclaimed | {work.job.id for work in works}:
            owner = owners.get(job_id, ("", ""))[1]
            if (job_id, owner) in live:
                problems.append(f"{worker.consumer}'s reclaim took {job_id} that {owner} holds")
            stall = int(owner != worker.consumer)
            if after.get(job_id, before.get(job_id, 0)) - before.get(job_id, 0) not in (0, stall):
                problems.append(
                    f"{job_id} of {owner} taken over by {worker.consumer}: stalls "
                    f"{before.get(job_id)} -> {after.get(job_id)}"
                )
        assert not problems, "\n".join(problems)
        stalled = sum(1 for _, owner in owners.values() if owner not in live_consumers)
        if stalled and free <= 0:
            TrafficMachine.counts["reclaim_lanes_full"] += 1
        if stalled and self.paused:
            TrafficMachine.counts["reclaim_paused"] += 1
        TrafficMachine.counts["taken_over"] += sum(
            1 for job in reclaimed if owners[job][1] != worker.consumer
        )

    # --- freezing, time, pause --------------------------------------------------------------------

    @precondition(lambda self: not any(self.frozen))
    @rule(w=st.integers(0, len(WORKERS) - 1))
    def freeze(self, w: int) -> None:
        """A worker stops (a long GC pause, a frozen VM): it holds its claims and leases."""
        self.frozen[w] = True

    @precondition(lambda self: not any(self.frozen))
    @rule(w=st.integers(0, len(WORKERS) - 1), full=st.booleans(), pause=st.booleans())
    def peer_dies(self, w: int, full: bool, pause: bool) -> None:
        """Worker ``w``'s peer claims what it can and freezes past the stall timeout; then
        ``w`` (its lanes filled first when ``full``, its queue paused when ``pause``) runs a
        reclaim pass: the situation the reclaim checks aim at, made likely."""
        peer = (w + 1) % len(WORKERS)
        if full:
            self.read(w)
        self.read(peer)
        self.freeze(peer)
        self.time_passes()
        if pause:
            self.pause_or_resume(pause=True)
        self.reclaim(w)

    @precondition(lambda self: any(self.frozen))
    @rule(status=st.sampled_from((200, 500)))
    def thaw(self, status: int) -> None:
        """The frozen worker runs again: its attempts on the wire end (late, their claims
        maybe taken over), then it goes on with what it holds.

        A worker frozen past the stall timeout is, until it runs again, what a dead one is to
        the others: its entries are idle past the stall timeout, and a reclaim pass may take
        them over a moment before it thaws or a moment after, until its own reclaim loop keeps
        its claims fresh again (nothing runs the instant a process thaws, so no code could
        close that window). The claims it comes back with are therefore not live ones yet
        (``aged``): a takeover of them is the one RELIABILITY.md R3 expects, and fencing
        refuses the thawed worker's late outcomes (a lease it lost is not renewed at its
        attempt while the new holder's fills ``max_in_flight``)."""
        w = self.frozen.index(True)
        if self.expired[w]:
            self.aged[w] = {work.job.id for work in self.held[w]}
        self.frozen[w] = self.expired[w] = False
        worker = self.workers[w]
        for work in self.started[w]:
            worker._record(work, _outcome(status), worker.store.clock.now_ms())
            self._lane_done(w, work)
        self.started[w] = []

    @rule()
    def time_passes(self) -> None:
        """The stall timeout and the lease lifetime pass: a frozen worker's pending entries and
        leases age; a live worker's reclaim loop keeps the claims it holds fresh meanwhile (a
        crashed attempt's entry ages), and every lease but those of its attempts on the wire
        runs out (a crashed attempt's, a job's waiting in its inbox)."""
        self.run(self._time_passes())

    async def _time_passes(self) -> None:
        db = self.db
        for s in STREAMS:
            key = db.keys.ready(s)
            for p in await _raw(db).xpending_range(key, GROUP, "-", "+", 10_000):
                await _raw(db).xclaim(
                    key, GROUP, p["consumer"].decode(), 0, [p["message_id"]],
                    idle=LONG_AGO_MS, justid=True,
                )  # fmt: skip
        on_the_wire = set()  # leases renewed as their attempts started, which last them
        for i, worker in enumerate(self.workers):
            if self.frozen[i]:
                self.expired[i] = True
            else:
                await self._keep_fresh(worker)
                self.aged[i] = set()
                on_the_wire |= {_lease_member(w.job.id, worker.consumer) for w in self.started[i]}
            for n, work in enumerate(self.held[i]):
                if hasattr(work, "admitted_at"):  # the job waited for a lane all this time
                    self.held[i][n] = replace(work, admitted_at=-1e9)
        for hook, cap in self.cap_of.items():
            if cap is None:
                continue
            key = db.keys.lease(hook)
            members = [m.decode() for m in await _raw(db).zrange(key, 0, -1)]
            aged = {m: 1 for m in members if m not in on_the_wire}
            if aged:  # a frozen worker's, a crashed attempt's, a job's waiting in an inbox
                await _raw(db).zadd(key, aged, xx=True)

    async def _keep_fresh(self, worker: Worker) -> None:
        """What a live worker's reclaim loop did meanwhile for the claims it holds."""
        held = getattr(worker, "_held", None)
        if held is None:
            return  # before held claims were kept fresh: nothing was
        for (_, stream), claims in held.items():
            await streams.reclaim_page(
                self.db, stream, worker.consumer, min_idle_ms=int(STALL_S * 1000),
                cursor="0-0", count=0, held=list(claims.values()),
            )  # fmt: skip

    @rule(pause=st.booleans())
    def pause_or_resume(self, pause: bool) -> None:
        self.run(self._pause(pause=pause))

    async def _pause(self, *, pause: bool) -> None:
        if pause:
            await control.pause(self.db, QUEUE)
        else:
            await control.resume(self.db, QUEUE)
        self.paused = pause
        for worker in self.workers:
            worker._paused = frozenset({QUEUE}) if pause else frozenset()

    @rule()
    def promote_and_tick(self) -> None:
        """The promoter moves what is due, and the waiting tick releases what room freed."""
        self.run(self._promote())

    async def _promote(self) -> None:
        for s in STREAMS:
            await delays.promote_due(self.db, s)
        try:
            from dispatcher.queue import waiting  # noqa: PLC0415 - absent before waiting sets
        except ImportError:
            return
        await waiting.tick(self.db)

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def holds(self) -> None:
        if self.store is None:
            return
        TrafficMachine.counts["steps"] += 1
        self.run(self._check())

    async def _check(self) -> None:  # noqa: C901 - a list of checks
        db = self.db
        problems = []
        in_flight: dict[str, list[str]] = {}
        for i, worker in enumerate(self.workers):
            if self.expired[i]:
                continue  # its leases ran out: a dead worker's attempts no longer count
            for work in self.started[i]:
                in_flight.setdefault(work.webhook.id, []).append(f"{work.job.id}@{worker.consumer}")
        for hook, attempts in in_flight.items():
            cap = self.cap_of[hook]
            if cap is not None and len(attempts) > cap:
                problems.append(
                    f"{len(attempts)} attempts in flight, max_in_flight {cap}: {attempts}"
                )
        now_ms = db.clock.now_ms()
        for i, worker in enumerate(self.workers):
            if self.frozen[i]:
                continue
            for work in self.started[i]:
                if not work.leased:
                    continue
                member = _lease_member(work.job.id, worker.consumer)
                score = await _raw(db).zscore(db.keys.lease(work.webhook.id), member)
                if score is None or score <= now_ms:
                    problems.append(f"the attempt {member} on the wire lost its lease ({score})")
        problems += await self._places()
        assert not problems, "\n".join(problems)

    async def _places(self) -> list[str]:
        """Each job in exactly one place: its stream, a delayed or waiting set, done, the DLQ."""
        db = self.db
        pipe = _raw(db).pipeline(transaction=False)
        for s in STREAMS:
            pipe.xrange(db.keys.ready(s))
            pipe.zrange(db.keys.delayed(s), 0, -1)
        waiting_key = getattr(db.keys, "waiting", None)  # none before waiting sets
        for hook in self.cap_of:
            pipe.zrange(waiting_key(hook) if waiting_key else f"{PREFIX}:none", 0, -1)
        pipe.zrange(db.keys.done, 0, -1)
        pipe.xrange(db.keys.dlq)
        replies = await pipe.execute()
        places: dict[str, list[str]] = {}
        for n, s in enumerate(STREAMS):
            for _, fields in replies[2 * n]:
                places.setdefault(fields[b"j"].decode(), []).append(f"stream {s}")
            for member in replies[2 * n + 1]:
                places.setdefault(member.decode(), []).append(f"delayed {s}")
        for n, hook in enumerate(self.cap_of):
            for member in replies[2 * len(STREAMS) + n]:
                places.setdefault(member.decode(), []).append(f"waiting {hook}")
                TrafficMachine.counts["waiting_seen"] += 1
        for member in replies[-2]:
            places.setdefault(member.decode(), []).append("done")
        for _, fields in replies[-1]:
            places.setdefault(fields.get(b"j", b"?").decode(), []).append("dlq")
        return [
            f"{job_id} is in {places.get(job_id, [])}"
            for job_id in self.jobs
            if len(places.get(job_id, [])) != 1
        ]

    # --- the final drain --------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Everything finishes: the frozen worker comes back, the queue is resumed, attempts
        answer 200, outcomes are written, due jobs promoted, waiting ones released, stalled
        ones reclaimed; then every job is delivered or dead."""
        if any(self.frozen):
            self.thaw(200)
        if self.paused:
            await self._pause(pause=False)
        for _ in range(60):
            for w, worker in enumerate(self.workers):
                while self.held[w]:
                    await self._start(w, 0, waited=False)
                for work in self.started[w]:
                    worker._record(work, _outcome(200), worker.store.clock.now_ms())
                    self._lane_done(w, work)
                self.started[w] = []
                await self._settle(w)
                await self._check()
            await asyncio.sleep(0.01)  # retries and deferrals come due within a few ms
            await self._promote()
            await self._time_passes()
            for w in range(len(WORKERS)):
                await self._reclaim(w)
                await self._read(w)
            await self._check()
            states = await self._states()
            if all(s in ("delivered", "dead") for s in states.values()) and not any(
                self.held + self.started
            ):
                break
        states = await self._states()
        stuck = {j: s for j, s in states.items() if s not in ("delivered", "dead")}
        assert not stuck, f"jobs never finished: {stuck}"

    async def _states(self) -> dict[str, str]:
        records = await _raw(self.db).hgetall(self.db.keys.jobs)
        states = {}
        for job_id in self.jobs:
            raw = records.get(job_id.encode())
            if raw is None:
                states[job_id] = "gone"
            elif raw.startswith(b"@"):
                states[job_id] = "queued"
            else:
                states[job_id] = str(orjson.loads(raw.partition(b"\n")[0])["s"])
        return states


# --- the test -------------------------------------------------------------------------------------


def traffic_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the machine's own."""
    server = RedisServer(tmp_path_factory.mktemp("traffic-redis"))
    server.start()
    TrafficMachine.server = server
    yield server
    server.stop()


traffic_server = pytest.fixture(scope="module")(traffic_redis)


@pytest.mark.timeout(0 if LONG else 600)
def test_traffic_model(traffic_server: RedisServer) -> None:
    """Any interleaving of claims, attempts, late outcomes, reclaims with lanes full or free,
    frozen workers, pauses and waiting jobs keeps every webhook within its max_in_flight, never
    takes over a live worker's job, and ends every job delivered or dead."""
    profile = settings.get_profile("traffic-long" if LONG else "traffic-ci")
    TrafficMachine.counts.clear()
    started = time.monotonic()
    logging = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(CRITICAL))
    try:
        run_state_machine_as_test(TrafficMachine, settings=profile)
    finally:
        structlog.configure(**logging)
        counts = TrafficMachine.counts
        seen = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in _RUN)
        print(
            f"traffic model: {counts['examples']} examples, {counts['steps']} checked steps, "
            f"{time.monotonic() - started:.1f} s ({seen})"
        )
