"""A stateful, randomized model test of the queue layer against a real redis-server.

Hypothesis drives the real queue verbs (``dispatcher.queue`` and the ``Client``) and real
``Worker`` objects (their claim, decide and record logic, without their background loops) in
random interleavings: publish (idempotency keys, tenants whose ids contain ``:``), claim, an
attempt's outcome (delivered, retry, dead), settle, crash a delivery, reclaim after the stall
timeout (a stall timeout of 0: everything pending has stalled), promote, replay (one, all, by
tenant), purge, delete a stream entry under the daemon, the orphan sweep, restart Redis from
its AOF or an RDB, and reload Redis to an older RDB snapshot. A plain Python model says what
each job must be after every step, and the invariants compare it with what Redis holds: each
job in exactly one state, nothing acknowledged without an outcome, a stale claim changing
nothing, DLQ size and status counts, and after a final drain every job delivered or dead.

``make test`` runs it short and seeded (``model-ci``); ``make test-model`` runs it long
(``MODEL_EXAMPLES``, ``MODEL_STEPS``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
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

from dispatcher import Client, shapes
from dispatcher.config import DeliveryConfig, JobsConfig
from dispatcher.delivery import Worker
from dispatcher.errors import DispatcherError, IdempotencyKeyReused
from dispatcher.metrics import Metrics
from dispatcher.queue import codec, delays, dlq, streams
from dispatcher.queue import status as queue_status
from dispatcher.queue.keys import GROUP, streams_of
from dispatcher.queue.scripts import _source
from dispatcher.queue.store import Store
from dispatcher.sender import Outcome, Sender
from dispatcher.ssrf import AddressPolicy
from tests.helpers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine, Iterator, Mapping
    from pathlib import Path

    from dispatcher.gate import Work as _Work
    from dispatcher.queue.streams import Claim, Settlement

# --- settings -------------------------------------------------------------------------------------

STEPS = int(os.environ.get("MODEL_STEPS", "30"))
LONG = "MODEL_EXAMPLES" in os.environ
settings.register_profile(
    "model-ci",
    # 60 seeded examples (80 before): every rule and every variant of its arguments, each
    # Redis event (snapshot, reload of an older one, restart on the AOF or an RDB) several
    # times, replay by tenant included; the long run explores (make test-model).
    max_examples=60,
    stateful_step_count=STEPS,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "model-long",
    max_examples=int(os.environ.get("MODEL_EXAMPLES", "5000")),
    stateful_step_count=STEPS,
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

PREFIX = "model"
QUEUE = "default"
STREAMS = streams_of(QUEUE)  # high, normal, low
#: Tenants whose ids contain ":", and keys that make ``tenant:key`` ambiguous across them.
TENANTS = ("org", "org:1", "a", "a:b")
IDEM_KEYS = ("k", "1:k", "b:k")
FAN_OUT = {"org": 2}  # webhooks per tenant (1 unless named)
WORKERS = ("model-a:101:1700000000001", "model-b:102:1700000000002")
POISON = streams.POISON_STALLS
MAX_ATTEMPTS = 2  # dead after two failed attempts: the DLQ is reached within a run
BURST = 70  # a burst fills a worker's pending window past the fence's margin (64)
MAX_JOBS = 150  # no burst beyond this: the checks read every job at every step
FINAL = frozenset({"delivered", "dead", "gone"})
#: Whether a worker taking back its own entry counts a stall. reclaim.lua counts only a
#: takeover from another consumer since its held claims are kept fresh; before, every one.
SELF_TAKEOVER_STALLS = "owner[sid] ~= consumer" not in _source("reclaim")


# --- the model ------------------------------------------------------------------------------------


@dataclass
class MJob:
    """What one accepted job must be. ``state``: queued (``entry``: its stream entry exists,
    else it is an orphan for the sweep), active (pending for ``owner`` with ``claim``),
    scheduled (``due_ms``), delivered, dead (``reason``) or gone (purged)."""

    id: str
    tenant: str
    stream: str
    state: str
    locator: bool = True  # the record is still "@stream sid" (never attempted nor reclaimed)
    entry: bool = True
    owner: str | None = None
    claim: Claim | None = None
    attempts: int = 0
    stalls: int = 0
    reason: str | None = None
    due_ms: int | None = None

    def current(self, consumer: str, claim: Claim) -> bool:
        """Whether a claim is the one Redis holds now: same consumer, entry and token."""
        return self.state == "active" and self.owner == consumer and self.claim == claim


@dataclass
class Model:
    jobs: dict[str, MJob] = field(default_factory=dict)
    # (tenant, key) -> the first request's (priority, due_ms) and its answer
    idem: dict[tuple[str, str], tuple[tuple[str, int | None], shapes.PublishAnswer]] = field(
        default_factory=dict
    )
    raw_dlq: int = 0  # DLQ entries without a job (malformed)

    def copy(self) -> Model:
        return Model({k: replace(j) for k, j in self.jobs.items()}, dict(self.idem), self.raw_dlq)

    def in_state(self, *states: str) -> list[MJob]:
        return [j for j in self.jobs.values() if j.state in states]


# --- what Redis holds -----------------------------------------------------------------------------


@dataclass
class Seen:
    records: dict[str, bytes]
    entries: dict[str, dict[str, dict[bytes, bytes]]]  # stream -> sid -> fields
    pending: dict[str, dict[str, tuple[str, int]]]  # stream -> sid -> (consumer, deliveries)
    delayed: dict[str, dict[str, float]]  # stream -> job id -> due
    done: set[str]
    dlq: list[tuple[str, dict[bytes, bytes]]]


async def observe(store: Store) -> Seen:
    keys = store.keys
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(keys.jobs)
    for s in STREAMS:
        pipe.xrange(keys.ready(s))
        pipe.xpending_range(keys.ready(s), GROUP, min="-", max="+", count=100_000)
        pipe.zrange(keys.delayed(s), 0, -1, withscores=True)
    pipe.zrange(keys.done, 0, -1)
    pipe.xrange(keys.dlq)
    replies = await pipe.execute()
    records = {k.decode(): v for k, v in replies[0].items()}
    entries, pending, delayed = {}, {}, {}
    for i, s in enumerate(STREAMS):
        xr, xp, zr = replies[1 + 3 * i : 4 + 3 * i]
        entries[s] = {sid.decode(): f for sid, f in xr}
        pending[s] = {
            p["message_id"].decode(): (p["consumer"].decode(), int(p["times_delivered"]))
            for p in xp
        }
        delayed[s] = {m.decode(): score for m, score in zr}
    done = {m.decode() for m in replies[-2]}
    dlq = [(sid.decode(), f) for sid, f in replies[-1]]
    return Seen(records, entries, pending, delayed, done, dlq)


def places_of(seen: Seen) -> dict[str, dict[str, Any]]:
    """Every place that names each job: ready entries, delayed zsets, the done set, the DLQ."""
    places: dict[str, dict[str, Any]] = {}

    def of(job_id: str) -> dict[str, Any]:
        if job_id not in places:
            places[job_id] = {"entries": [], "delayed": [], "done": False, "dlq": []}
        return places[job_id]

    for stream, entries in seen.entries.items():
        for sid, fields in entries.items():
            of(fields.get(b"j", b"").decode())["entries"].append((stream, sid))
    for stream, zset in seen.delayed.items():
        for job_id in zset:
            of(job_id)["delayed"].append(stream)
    for job_id in seen.done:
        of(job_id)["done"] = True
    for sid, fields in seen.dlq:
        if b"j" in fields:
            of(fields[b"j"].decode())["dlq"].append(sid)
    return places


def actual(
    seen: Seen, job_id: str, index: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The state of one job as Redis holds it, with every place that names it."""
    raw = seen.records.get(job_id)
    empty = {"entries": [], "delayed": [], "done": False, "dlq": []}
    places = (index if index is not None else places_of(seen)).get(job_id, empty)
    found: dict[str, Any] = {"places": places}
    if raw is None:
        found["state"] = "gone"
        return found
    if raw.startswith(b"@"):
        stream, sid = codec.parse_locator(raw, job_id)
        found.update(locator=True, a=0, k=0)
        meta: dict[str, Any] = {"s": "queued", "q": stream, "sid": sid}
    else:
        meta = orjson.loads(raw.partition(b"\n")[0])
        found.update(locator=False, a=meta.get("a"), k=meta.get("k"), reason=meta.get("r"))
    found["meta_state"] = meta["s"]
    if meta["s"] == "queued":
        where, at = str(meta["q"]), meta.get("sid")
        owner = seen.pending.get(where, {}).get(at) if at else None
        exists = at is not None and at in seen.entries.get(where, {})
        found.update(stream=where, sid=at, entry=exists, owner=owner)
        found["state"] = "active" if owner else "queued"
    else:
        found["state"] = meta["s"]
        found["d"] = meta.get("d")
    return found


# --- the machine ----------------------------------------------------------------------------------


async def _clock_past(store: Store, ms: int) -> None:
    """Let time pass ``ms`` (a due time, a DLQ entry's time): a few ms at most here."""
    await asyncio.sleep(max(0, ms + 2 - store.clock.now_ms()) / 1000)


def _lane_done(worker: Worker, work: _Work) -> None:
    """What a lane does when its delivery ends (recorded or crashed)."""
    release = getattr(worker, "_release", None)  # the held claims kept fresh, where kept
    if release is not None:
        release(work.claim)
    worker._busy -= 1


def _outcome(status: int) -> Outcome:
    return Outcome(status, None if status < 300 else f"HTTP {status}", 1.0, None)


class QueueMachine(RuleBasedStateMachine):
    server: ClassVar[RedisServer]
    snapshot_dir: ClassVar[Path]
    #: steps and examples run, for the report at the end of the test
    counts: ClassVar[dict[str, int]] = {"examples": 0, "steps": 0}

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.model = Model()
        self.snapshot: Model | None = None
        self.store: Store | None = None
        self.client: Client | None = None
        self.workers: list[Worker] = []
        self.held: list[list[_Work]] = [[] for _ in WORKERS]
        self.hooks: dict[str, list[str]] = {}
        self.log: list[str] = []
        QueueMachine.counts["examples"] += 1

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    # --- set-up and tear-down ---------------------------------------------------------------------

    @initialize()
    def set_up(self) -> None:
        self.run(self._set_up())

    async def _set_up(self) -> None:
        self.store = Store.open(self.server.url, prefix=PREFIX)
        await self.store.redis.flushall()
        snap = self.snapshot_dir / "older.rdb"
        snap.unlink(missing_ok=True)
        self.client = Client(Store.open(self.server.url, prefix=PREFIX), dlq_retention_s=0)
        for tenant in TENANTS:
            self.hooks[tenant] = []
            for _ in range(FAN_OUT.get(tenant, 1)):
                hook = await self.client.create_webhook(tenant, "https://hooks.example.com/in")
                self.hooks[tenant].append(hook["id"])
        cfg = DeliveryConfig(
            concurrency=8192,  # the adaptive per-endpoint cap never defers in a model run
            timeout_s=1.0,
            stall_timeout_s=0.0,  # reclaim takes everything pending: every claim has stalled
            max_attempts=MAX_ATTEMPTS,
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

    @property
    def db(self) -> Store:
        assert self.store is not None
        return self.store

    @property
    def cl(self) -> Client:
        assert self.client is not None
        return self.client

    def _holding(self, w: int) -> int:
        """Worker ``w`` among those that hold claimed work (the rule's precondition)."""
        holders = [i for i, held in enumerate(self.held) if held]
        return holders[w % len(holders)]

    def _settling(self, w: int) -> int:
        """Worker ``w`` among those with outcomes to write."""
        ready = [i for i, worker in enumerate(self.workers) if not worker._settle_queue.empty()]
        return ready[w % len(ready)]

    def _has(self, *states: str) -> bool:
        return any(j.state in states for j in self.model.jobs.values())

    def _pick(self, candidates: list[MJob], pick: int) -> MJob | None:
        return candidates[pick % len(candidates)] if candidates else None

    # --- publishing -------------------------------------------------------------------------------

    @rule(
        tenant=st.sampled_from(TENANTS),
        key=st.none() | st.sampled_from(IDEM_KEYS),
        priority=st.sampled_from(("normal", "high", "low")),
        scheduled=st.booleans(),
    )
    def publish(self, tenant: str, key: str | None, priority: str, scheduled: bool) -> None:
        self.run(self._publish(tenant, key, priority, scheduled=scheduled))

    async def _publish(
        self, tenant: str, key: str | None, priority: str, *, scheduled: bool
    ) -> None:
        # Far enough ahead that a slow step never finds it due at publish (the model would
        # say scheduled, Redis queued); the promote rule brings it forward (_promote).
        deliver_at = datetime.now(UTC) + timedelta(seconds=30) if scheduled else None
        due = int(deliver_at.timestamp() * 1000) if deliver_at else None
        request: dict[str, Any] = {
            "idempotency_key": key,
            "deliver_at": deliver_at,
            "priority": priority,
        }
        known = self.model.idem.get((tenant, key)) if key else None
        if known is not None and known[0] != (priority, due):
            # The key was first used for another request: refused, and nothing enqueued.
            with pytest.raises(IdempotencyKeyReused):
                await self.cl.publish_checked(tenant, "a.b", {"n": 1}, **request)
            return
        new, answer = await self.cl.publish_checked(tenant, "a.b", {"n": 1}, **request)
        first = known[1] if known else None
        if first is not None:
            assert not new, f"a repeated key ({tenant!r}, {key!r}) made a new event"
            assert answer == first, "a repeated key answers the first answer"
            return
        assert new, (
            f"publish of tenant {tenant!r} with key {key!r} was answered as a repeat with "
            f"{answer} (another tenant's event?)"
        )
        hooks = sorted(j["webhook_id"] for j in answer["jobs"])
        assert hooks == sorted(self.hooks[tenant]), "one job per subscribed webhook of the tenant"
        stream = streams_of(QUEUE)[("high", "normal", "low").index(priority)]
        for job in answer["jobs"]:
            assert job["id"] not in self.model.jobs
            self.model.jobs[job["id"]] = MJob(
                job["id"],
                tenant,
                stream,
                "scheduled" if due else "queued",
                locator=due is None,
                due_ms=due,
            )
        if key:
            self.model.idem[tenant, key] = ((priority, due), answer)

    @precondition(lambda self: len(self.model.jobs) < MAX_JOBS)
    @rule()
    def publish_burst(self) -> None:
        """Many events at once: a worker's claims then span more than the fence's margin."""
        self.run(self._burst())

    async def _burst(self) -> None:
        answers = await self.cl.publish_many(
            [{"tenant_id": "a", "event_type": "a.b", "payload": {"i": i}} for i in range(BURST)]
        )
        for answer in answers:
            assert isinstance(answer, dict), answer
            [job] = answer["jobs"]
            self.model.jobs[job["id"]] = MJob(job["id"], "a", QUEUE, "queued")

    # --- the worker's side ------------------------------------------------------------------------

    def _take_inbox(self, w: int) -> list[_Work]:
        inbox = self.workers[w]._inbox
        works = []
        while not inbox.empty():
            works.append(inbox.get_nowait())
            inbox.task_done()
        self.held[w] += works
        return works

    @precondition(lambda self: any(j.entry for j in self.model.in_state("queued")))
    @rule(w=st.integers(0, len(WORKERS) - 1), budget=st.sampled_from((1, 3, 200)))
    def claim(self, w: int, budget: int) -> None:
        self.run(self._claim(w, budget))

    async def _claim(self, w: int, budget: int) -> None:
        worker = self.workers[w]
        ready = [j for j in self.model.in_state("queued") if j.entry]
        consumer = worker.consumer
        claims, malformed = await streams.claim_new(self.db, STREAMS, consumer, budget=budget)
        assert not malformed, f"malformed entries in the ready stream: {malformed}"
        assert len(claims) == min(budget, len(ready)), (
            f"claimed {len(claims)} of {len(ready)} ready jobs with a budget of {budget}"
        )
        for claim in claims:
            job = self.model.jobs.get(claim.job_id)
            assert job is not None, f"claimed an unknown job {claim.job_id}"
            assert job.state == "queued", f"claimed a job that is {job.state}"
            assert job.entry, "claimed a job whose entry was deleted"
            job.state, job.owner, job.claim = "active", worker.consumer, claim
        if claims:  # the worker decides (every webhook is enabled here)
            await worker._start(self.db, claims)
        works = self._take_inbox(w)
        assert len(works) == len(claims), "every claimed job is handed to a lane"

    @precondition(lambda self: any(self.held))
    @rule(w=st.integers(0, len(WORKERS) - 1), pick=st.integers(0, 1000),
          status=st.sampled_from((200, 500)), every=st.booleans())  # fmt: skip
    def attempt(self, w: int, pick: int, status: int, every: bool) -> None:
        """One held delivery (or all) answered ``status``; the worker queues the outcome."""
        if not any(self.held):
            return
        w = self._holding(w)
        held = self.held[w]
        chosen = list(held) if every else [held[pick % len(held)]]
        worker = self.workers[w]
        for work in chosen:
            held.remove(work)
            worker._record(work, _outcome(status), worker.store.clock.now_ms())
            _lane_done(worker, work)

    @precondition(lambda self: any(self.held))
    @rule(w=st.integers(0, len(WORKERS) - 1), pick=st.integers(0, 1000),
          count=st.integers(1, BURST))  # fmt: skip
    def crash(self, w: int, pick: int, count: int) -> None:
        """Deliveries that crash (or whose load failed): their entries stay pending."""
        w = self._holding(w)
        held = self.held[w]
        start = pick % len(held)
        dropped = held[start : start + count]
        del held[start : start + count]
        for work in dropped:
            _lane_done(self.workers[w], work)

    @precondition(lambda self: any(not w._settle_queue.empty() for w in self.workers))
    @rule(w=st.integers(0, len(WORKERS) - 1))
    def settle(self, w: int) -> None:
        self.run(self._settle(self._settling(w)))

    async def _settle(self, w: int) -> None:  # noqa: C901 - the model of settle.lua
        """The settler's batch, written as ``_settle_until_written`` does, once."""
        worker = self.workers[w]
        batch: list[Settlement] = []
        while not worker._settle_queue.empty():
            batch.append(worker._settle_queue.get_nowait())
            worker._settle_queue.task_done()
        by_queue: dict[str, list[Settlement]] = {}
        for item in batch:
            by_queue.setdefault(item.claim.queue, []).append(item)
        for queue, items in by_queue.items():
            expect_stale = []
            # judged in order, as settle.lua does: an earlier current claim acks the entry
            shadow = {j: replace(m) for j, m in self.model.jobs.items()}
            for item in items:
                job = shadow.get(item.claim.job_id)
                if job is None or not job.current(worker.consumer, item.claim):
                    expect_stale.append(item.claim.job_id)
                else:
                    job.state = "settled"
            try:
                stale = await streams.settle(
                    self.db, worker.consumer, items, held=worker._busy + worker._unsettled
                )
            except Exception as exc:
                raise AssertionError(
                    f"settle.lua failed on {queue}: {exc} (the worker retries this batch forever)"
                ) from exc
            assert sorted(stale) == sorted(expect_stale), (
                f"stale claims: Redis said {sorted(stale)}, the model {sorted(expect_stale)}"
            )
            for item in items:
                job = self.model.jobs.get(item.claim.job_id)
                if job is None or not job.current(worker.consumer, item.claim):
                    continue
                job.owner = job.claim = None
                job.locator = False
                job.attempts += 1
                if item.kind == "D":
                    job.state = "delivered"
                elif item.kind == "R":
                    job.state, job.due_ms = "scheduled", item.score_ms
                else:
                    assert item.kind == "X", item.kind
                    job.state, job.reason = "dead", item.reason
        worker._unsettled -= len(batch)

    @precondition(lambda self: self._has("active"))
    @rule(w=st.integers(0, len(WORKERS) - 1))
    def reclaim(self, w: int) -> None:
        """The stall timeout passed for everything pending: worker ``w`` takes it all over."""
        self.run(self._reclaim(w))

    async def _reclaim(self, w: int) -> None:
        """Every page of every stream, as ``Worker.reclaim`` reads them; the worker decides."""
        worker = self.workers[w]
        for stream in STREAMS:
            mine = [j for j in self.model.in_state("active") if j.stream == stream]
            cursor, claims = "0-0", []
            while True:
                page = await streams.reclaim_page(
                    self.db, stream, worker.consumer, min_idle_ms=0, cursor=cursor, count=100
                )
                claims += page.claims
                cursor = page.cursor
                if cursor == "0-0":
                    break
            if claims:
                await worker._start(self.db, claims)
            works = {work.claim.job_id: work for work in self._take_inbox(w)}
            expected = set()
            for job in mine:
                before, job.owner, job.claim = job.owner, None, None
                if not job.entry:  # deleted while pending: leaves the PEL, an orphan now
                    job.state = "queued"
                    continue
                stalled = SELF_TAKEOVER_STALLS or before != worker.consumer
                job.stalls += stalled
                job.locator = False
                if stalled and job.stalls >= POISON:
                    job.state, job.reason = "dead", "poison"
                    continue
                expected.add(job.id)
                work = works.get(job.id)
                if work is not None:
                    job.state, job.owner, job.claim = "active", worker.consumer, work.claim
            assert set(works) == expected, (
                f"reclaimed {sorted(works)}, the model expected {sorted(expected)}"
            )

    # --- the background verbs ---------------------------------------------------------------------

    @precondition(lambda self: self._has("scheduled"))
    @rule()
    def promote(self) -> None:
        self.run(self._promote())

    async def _promote(self) -> None:
        """Time passes until every scheduled job is due (a few ms: small delays and backoff),
        so which jobs move never depends on how fast the steps ran."""
        scheduled = self.model.in_state("scheduled")
        far = self.db.clock.now_ms() + 1_000
        for job in scheduled:  # published for later: its time comes now
            if job.due_ms is not None and job.due_ms > far:
                await self.db.redis.zadd(self.db.keys.delayed(job.stream), {job.id: 0}, xx=True)
                job.due_ms = 0
        if scheduled:
            await _clock_past(self.db, max(j.due_ms or 0 for j in scheduled))
        for stream in STREAMS:
            done = await delays.promote_due(self.db, stream)
            assert not done.orphans, f"scheduled jobs without a record: {done.orphans}"
            due = [
                j
                for j in self.model.in_state("scheduled")
                if j.stream == stream and j.due_ms is not None and j.due_ms <= done.server_ms
            ]
            assert done.moved == len(due), f"promoted {done.moved}, the model {len(due)} due"
            for job in due:
                job.state, job.entry, job.due_ms, job.locator = "queued", True, None, False

    @precondition(lambda self: self._has("queued", "active"))
    @rule()
    def orphan_sweep(self) -> None:
        self.run(self._orphans())

    async def _orphans(self) -> None:
        cursor, requeued, dead = "0", set(), set()
        while True:
            found = await delays.find_orphans(self.db, cursor=cursor, count=50)
            requeued |= set(found.requeued)
            dead |= set(found.dead)
            cursor = found.cursor
            if cursor == "0":
                break
        orphans = [j for j in self.model.in_state("queued") if not j.entry]
        assert requeued == {j.id for j in orphans if not j.locator}, "requeued orphans"
        assert dead == {j.id for j in orphans if j.locator}, "entry_missing orphans"
        for job in orphans:
            if job.locator:  # never attempted: its payload went with its entry
                job.state, job.reason, job.locator = "dead", "entry_missing", False
            else:
                job.entry = True

    @precondition(lambda self: self._has("queued", "active"))
    @rule(pick=st.integers(0, 1000))
    def delete_entry(self, pick: int) -> None:
        """Someone XDELs a job's stream entry (or it was trimmed) under the daemon."""
        job = self._pick([j for j in self.model.in_state("queued", "active") if j.entry], pick)
        if job is not None:
            self.run(self._delete_entry(job))

    async def _delete_entry(self, job: MJob) -> None:
        found = actual(await observe(self.db), job.id)
        assert found.get("sid"), f"no entry to delete for {job.id}: {found}"
        await self.db.redis.xdel(self.db.keys.ready(found["stream"]), found["sid"])
        job.entry = False

    # --- the operator's side ----------------------------------------------------------------------

    def _replayable(self, job: MJob) -> bool:
        """Dead, and with what a delivery needs (an entry_missing job has no payload)."""
        return job.state == "dead" and job.reason != "entry_missing"

    def _replayed(self, jobs: list[MJob]) -> None:
        for job in jobs:
            job.state, job.entry, job.attempts, job.stalls = "queued", True, 0, 0
            job.reason = None

    @precondition(lambda self: self._has("dead"))
    @rule(how=st.sampled_from(("one", "all", "tenant")), pick=st.integers(0, 1000))
    def replay(self, how: str, pick: int) -> None:
        """Replay one job (dead or not), every dead job, or a tenant's dead jobs."""
        jobs = list(self.model.jobs.values())
        if how == "one":
            self.replay_one(pick)
        elif how == "all":
            self.run(self._replay(jobs, self.cl.replay_matching()))
        else:
            tenant = TENANTS[pick % len(TENANTS)]
            mine = [j for j in jobs if j.tenant == tenant]
            self.run(self._replay(mine, self.cl.replay_matching(tenant_id=tenant)))

    def replay_one(self, pick: int) -> None:
        job = self._pick(list(self.model.jobs.values()), pick)
        if job is not None:
            self.run(self._replay([job], self.cl.replay([job.id])))

    def replay_all(self) -> None:
        self.replay("all", 0)

    async def _replay(self, jobs: list[MJob], call: Coroutine[Any, Any, shapes.Replayed]) -> None:
        want = [j for j in jobs if self._replayable(j)]
        try:
            count = (await call)["replayed"]
        except DispatcherError:  # refused as a whole: then nothing changed
            if want:
                raise
            return
        assert count == len(want), (
            f"replayed {count}, the model {len(want)}; not replayable: "
            f"{[(j.id, j.state, j.reason) for j in jobs if j.state == 'dead' and j not in want]}"
        )
        self._replayed(want)

    @precondition(lambda self: self._has("dead") or self.model.raw_dlq > 0)
    @rule()
    def purge(self) -> None:
        self.run(self._purge())

    async def _purge(self) -> None:
        seen = await observe(self.db)
        if seen.dlq:  # let the clock pass the newest entry: then every entry is old enough
            newest = int(seen.dlq[-1][0].partition("-")[0])
            await _clock_past(self.cl.store, newest)
        purged = (await self.cl.purge_dlq(0, confirm=True))["purged"]
        dead = self.model.in_state("dead")
        assert purged == len(dead) + self.model.raw_dlq, "purge deletes every DLQ entry"
        for job in dead:
            job.state = "gone"
        self.model.raw_dlq = 0

    # --- Redis restarts and snapshots -------------------------------------------------------------

    async def _reconnect(self) -> None:
        for store in (self.db, self.cl.store):
            await store.redis.connection_pool.disconnect()

    def _wait_aof(self) -> None:
        """After ``CONFIG SET appendonly yes``: wait for the AOF to be written."""

        async def written() -> bool:
            info = await self.db.redis.info("persistence")
            return (
                bool(info["aof_enabled"])
                and not info["aof_rewrite_in_progress"]
                and not (info.get("aof_rewrite_scheduled"))
            )

        deadline = time.monotonic() + 10
        while not self.run(written()):
            assert time.monotonic() < deadline, "the AOF rewrite did not finish"
            time.sleep(0.002)

    def _start_from_rdb(self, rdb: Path) -> None:
        """Start redis-server on ``rdb`` alone (no AOF), then turn its AOF on again."""
        self.server.stop()
        directory = self.server.directory
        shutil.rmtree(directory / "appendonlydir", ignore_errors=True)
        shutil.copyfile(rdb, directory / "dump.rdb")
        self.server.appendonly = False
        try:
            self.server.start()
        finally:
            self.server.appendonly = True
        self.run(self._reconnect())
        self.run(self.db.redis.config_set("appendonly", "yes"))
        self._wait_aof()
        (directory / "dump.rdb").unlink()

    @precondition(lambda self: bool(self.model.jobs))
    @rule(what=st.sampled_from(("snapshot", "reload", "restart_aof", "snapshot", "restart_rdb")))
    def redis_server(self, what: str) -> None:
        """One rule for what happens to the server (each is slow, so together they are rare)."""
        if what == "snapshot" or (what == "reload" and self.snapshot is None):
            self.take_snapshot()
        elif what == "reload":
            self.reload_older_snapshot()
        else:
            self.restart(from_rdb=what == "restart_rdb")

    def restart(self, from_rdb: bool) -> None:
        """Redis shut down and started again, on its AOF or on an RDB saved just before."""
        if not from_rdb:
            self.server.stop()
            self.server.start()
            self.run(self._reconnect())
            return
        self.run(self.db.redis.save())
        rdb = self.snapshot_dir / "now.rdb"
        shutil.copyfile(self.server.directory / "dump.rdb", rdb)
        self._start_from_rdb(rdb)

    def take_snapshot(self) -> None:
        """An RDB saved now, to reload later (a replica behind, a restore from backup)."""
        self.run(self.db.redis.save())
        shutil.copyfile(self.server.directory / "dump.rdb", self.snapshot_dir / "older.rdb")
        (self.server.directory / "dump.rdb").unlink()
        self.snapshot = self.model.copy()

    def reload_older_snapshot(self) -> None:
        """Redis comes back on the older snapshot: jobs accepted since are lost (the
        documented window), jobs finished since come back as they were then (delivered again:
        at-least-once). Workers keep what they hold; their claims may be stale now."""
        assert self.snapshot is not None
        self._start_from_rdb(self.snapshot_dir / "older.rdb")
        lost = set(self.model.jobs) - set(self.snapshot.jobs)
        self.log.append(f"reload: {len(lost)} jobs accepted since the snapshot are lost")
        self.model = self.snapshot.copy()

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        if self.store is None:
            return
        QueueMachine.counts["steps"] += 1
        self.run(self._check())

    async def _check(self, *, full_status: bool = False) -> None:
        seen = await observe(self.db)
        model = self.model
        problems = []
        index = places_of(seen)
        for job in model.jobs.values():
            found = actual(seen, job.id, index)
            problems += [f"{job.id} ({job.tenant}): {p}" for p in _compare(job, found)]
        alive = {j for j, m in model.jobs.items() if m.state != "gone"}
        extra = set(seen.records) - alive
        if extra:
            problems.append(f"records of jobs the model does not know: {sorted(extra)}")
        for stream, entries in seen.entries.items():
            for sid, fields in entries.items():
                named = model.jobs.get(fields.get(b"j", b"").decode())
                if named is None or named.state not in ("queued", "active") or not named.entry:
                    problems.append(f"an entry {stream} {sid} {fields!r} of no queued job")
        raw = sum(1 for _, f in seen.dlq if b"j" not in f)
        if raw != model.raw_dlq:
            problems.append(f"{raw} malformed DLQ entries, the model {model.raw_dlq}")
        assert not problems, "\n".join(problems)
        want = _status_counts(model)
        if full_status:
            status: Mapping[str, Any] = await self.cl.status()
            got = {k: status[k] for k in want}
        else:  # the verbs behind its counts: the whole status is read at the end of a run
            [counts] = await queue_status.queue_counts(self.db, [QUEUE])
            got = {
                "queued": counts.queued,
                "active": counts.active,
                "scheduled": counts.scheduled,
                "dlq_size": await dlq.dlq_size(self.db),
            }
        assert got == want, f"status {got}, the model {want}"

    # --- the final drain --------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Finish everything: outcomes written, deliveries answered 200, retries promoted,
        orphans swept, stalled claims reclaimed; then every job is delivered, dead or purged."""
        for _ in range(40):
            for w in range(len(WORKERS)):
                self.attempt(w, 0, 200, every=True)
                await self._settle(w)
                await self._check()
            if self._has("scheduled"):
                await self._promote()
            await self._orphans()
            await self._reclaim(0)
            await self._check()
            await self._claim(1, 200)
            await self._check()
            if all(j.state in FINAL for j in self.model.jobs.values()) and not any(self.held):
                break
        stuck = [(j.id, j.state) for j in self.model.jobs.values() if j.state not in FINAL]
        assert not stuck, f"jobs never finished: {stuck}"
        await self._check(full_status=True)


def _compare(job: MJob, found: dict[str, Any]) -> Iterator[str]:  # noqa: C901, PLR0912 - a list of checks
    places = found["places"]
    state = found["state"]
    want = job.state
    if want == "queued" and not job.entry:
        want = "orphan"
    if state == "queued" and not found.get("entry"):
        state = "orphan"
    if want != state:
        yield f"is {state} in Redis ({found}), {want} in the model"
        return
    if state == "gone":
        if places["entries"] or places["delayed"] or places["done"] or places["dlq"]:
            yield f"gone but still named in {places}"
        return
    if found["locator"] != job.locator and state in ("queued", "active", "orphan"):
        yield f"locator {found['locator']}, the model {job.locator}"
    if not found["locator"] and (found["a"], found["k"]) != (job.attempts, job.stalls):
        yield f"attempts/stalls {found['a']}/{found['k']}, the model {job.attempts}/{job.stalls}"
    entries = places["entries"]
    if state in ("queued", "active"):
        mine = [(s, sid) for s, sid in entries if sid == found["sid"]]
        if state == "queued" and not mine:
            yield f"queued without its entry: {found}"
        if [e for e in entries if e not in mine]:
            yield f"in the ready stream more than once: {entries}"
    elif entries:
        yield f"{state} but still in the ready stream: {entries}"
    if state == "active":
        assert job.claim is not None
        if found["owner"] != (job.owner, int(job.claim.token)):
            yield f"pending for {found['owner']}, the model {(job.owner, job.claim.token)}"
    if places["delayed"] != ([job.stream] if state == "scheduled" else []):
        yield f"{state} with delayed entries {places['delayed']}"
    if places["done"] != (state == "delivered"):
        yield f"{state} but in the done set: {places['done']}"
    if state == "dead":
        if places["dlq"] != [found["d"]]:
            yield f"dead with DLQ entries {places['dlq']} (its record names {found['d']})"
        if found.get("reason") != job.reason:
            yield f"dead as {found.get('reason')}, the model {job.reason}"
    elif places["dlq"]:
        yield f"{state} but in the DLQ: {places['dlq']}"


def _status_counts(model: Model) -> dict[str, int]:
    """What ``status`` must answer: ``queued`` is entries minus pending, per stream."""
    queued = 0
    for stream in STREAMS:
        jobs = [j for j in model.jobs.values() if j.stream == stream]
        present = sum(1 for j in jobs if j.state in ("queued", "active") and j.entry)
        pending = sum(1 for j in jobs if j.state == "active")
        queued += max(present - pending, 0)
    return {
        "queued": queued,
        "active": len(model.in_state("active")),
        "scheduled": len(model.in_state("scheduled")),
        "dlq_size": len(model.in_state("dead")) + model.raw_dlq,
    }


# --- the test -------------------------------------------------------------------------------------


def model_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the model's own (the model restarts it), append-only file on."""
    server = RedisServer(tmp_path_factory.mktemp("model-redis"), appendonly=True)
    server.start()
    QueueMachine.server = server
    QueueMachine.snapshot_dir = tmp_path_factory.mktemp("model-snapshots")
    yield server
    server.stop()


model_server = pytest.fixture(scope="module")(model_redis)


@pytest.mark.timeout(0 if LONG else 600)
def test_queue_model(model_server: RedisServer) -> None:
    """Any interleaving of publishes, claims, outcomes, reclaims, replays, purges, deleted
    entries and Redis restarts keeps every accepted job in exactly one state, and ends each one
    delivered or dead."""
    profile = settings.get_profile("model-long" if LONG else "model-ci")
    QueueMachine.counts.update(examples=0, steps=0)
    started = time.monotonic()
    logging = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(CRITICAL))
    try:
        run_state_machine_as_test(QueueMachine, settings=profile)
    finally:
        structlog.configure(**logging)
        print(
            f"model: {QueueMachine.counts['examples']} examples, "
            f"{QueueMachine.counts['steps']} checked steps, {time.monotonic() - started:.1f} s"
        )
