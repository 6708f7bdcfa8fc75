"""The relay (issue 22): region A's outbox entries become jobs in region B's queues, written as
B's own publish writes them, at least once and never twice, in order, across B's outages."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex
from structlog.testing import capture_logs

from dispatcher import Client
from dispatcher.ids import new_event_ids, new_webhook_id, shard_job_prefix, shard_of
from dispatcher.metrics import Metrics
from dispatcher.queue import outbox
from dispatcher.queue.keys import RELAY_GROUP
from dispatcher.queue.records import get_job
from dispatcher.queue.regions import Regions
from dispatcher.queue.store import Store
from dispatcher.relay import Relay, _Holder
from tests.conftest import WorkerHarness
from tests.helpers import RedisServer, eventually, stream_entries

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Iterator
    from pathlib import Path

    from tests.target import Target

pytestmark = pytest.mark.xdist_group("regions")

NAMES = ("a", "b")


class Servers:
    def __init__(self, root: Path) -> None:
        self.a = RedisServer(root / "a")
        self.b = RedisServer(root / "b", appendonly=True)  # restarted by a test: keeps its data

    @classmethod
    def running(cls, root: Path) -> Iterator[Servers]:
        """Both started, until the generator ends (a module fixture's body)."""
        found = cls(root)
        found.a.start()
        found.b.start()
        try:
            yield found
        finally:
            found.a.stop()
            found.b.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Region a's and region b's Redis, for the whole module."""
    yield from Servers.running(tmp_path_factory.mktemp("relay"))


class Pair:
    """Region a (its store, its Regions, the Redis behind) and region b (a Client on it)."""

    def __init__(self, servers: Servers, prefix: str) -> None:
        self.servers, self.prefix = servers, prefix
        self.a = Store.open(servers.a.url, prefix=prefix)
        self.b = Client.from_url(servers.b.url, prefix)
        self.regions = Regions(self.a, "a", {"a": servers.a.url, "b": servers.b.url})
        self.metrics = Metrics()

    async def start(self) -> None:
        await self.a.adopt_region("a", NAMES)
        await self.b.store.adopt_region("b", NAMES)

    async def close(self) -> None:
        await self.regions.close()
        for url, store in ((self.servers.a.url, self.a), (self.servers.b.url, self.b.store)):
            conn = aioredis.Redis.from_url(url)
            keys = [k async for k in conn.scan_iter(f"{self.prefix}:*", count=1000)]
            if keys:
                await conn.delete(*keys)
            await conn.aclose()
            await store.close()

    async def hook(self, target_url: str = "http://127.0.0.1:9/hook", **fields: Any) -> str:
        """A webhook of tenant acme in region b."""
        created = await self.b.create_webhook("acme", target_url, ["order.paid"], **fields)
        return created["id"]

    async def put(self, fields: dict[bytes, bytes]) -> str:
        """An outbox entry in region a for region b (publish.lua's part, written directly)."""
        sid = await self.a.redis.xadd(self.a.keys.outbox("b"), fields)  # type: ignore[arg-type]
        return cast("bytes", sid).decode()

    async def outbox_len(self) -> int:
        return int(await self.a.redis.xlen(self.a.keys.outbox("b")))

    async def drained(self) -> bool:
        """Whether a's outbox to b is empty (every entry acked and deleted)."""
        return await self.outbox_len() == 0

    async def ready(self, stream: str = "default") -> list[str]:
        """The job ids in b's ready stream, in order."""
        found = await stream_entries(self.b.store.redis, self.b.store.keys.ready(stream))
        return [fields[b"j"].decode() for _, fields in found]

    async def run_relay(self, consumer: str = "relay-1") -> Running:
        stop = asyncio.Event()
        relay = Relay(self.regions, self.metrics, consumer=consumer)
        return Running(relay, stop, asyncio.create_task(relay.run(stop)))


class Running:
    def __init__(self, relay: Relay, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.relay, self.stop, self.task = relay, stop, task

    async def end(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=10)


@pytest.fixture
async def pair(servers: Servers) -> AsyncIterator[Pair]:
    found = Pair(servers, f"t{uuid.uuid4().hex[:12]}")
    await found.start()
    yield found
    await found.close()


def job_id(n: int = 1) -> str:
    return f"{new_event_ids()[1]}{n}~b"


def entry(
    job: str,
    webhook_id: str,
    *,
    payload: bytes = b'{"order": 1}',
    due_ms: int = 0,
    stream: str = "default",
    ordering: str | None = None,
) -> dict[bytes, bytes]:
    """An outbox entry as the contract fixes it (keys.py ``outbox``)."""
    fields = {
        b"j": job.encode(),
        b"w": webhook_id.encode(),
        b"t": b"acme",
        b"e": b"order.paid",
        b"q": stream.encode(),
        b"c": str(int(time.time() * 1000)).encode(),
        b"n": str(due_ms).encode(),
        b"p": payload,
    }
    if ordering is not None:
        fields[b"o"] = ordering.encode()
    return fields


def entries(*fields: dict[bytes, bytes]) -> list[outbox.Entry]:
    return [outbox.Entry(f"{i + 1}-0", f) for i, f in enumerate(fields)]


_TIMES = ("id", "event_id", "created_at", "processed_at", "next_attempt_at", "finished_at")


async def view(pair: Pair, job: str) -> dict[str, Any]:
    found = await get_job(pair.b.store, job)
    assert found is not None, job
    return {k: v for k, v in found.to_wire().items() if k not in _TIMES}


async def test_a_relayed_job_is_the_job_a_local_publish_makes(pair: Pair) -> None:
    """A job relayed to b reads in b as the one b's own publish makes: ready, scheduled, FIFO."""
    plain = await pair.hook()
    fifo = await pair.hook(ordering="fifo")
    later = int(time.time() * 1000) + 3_600_000
    deliver_at = datetime.fromtimestamp(later / 1000, UTC)
    local = [
        await pair.b.publish("acme", "order.paid", {"order": 1}),
        await pair.b.publish("acme", "order.paid", {"order": 1}, deliver_at=deliver_at),
        await pair.b.publish("acme", "order.paid", {"order": 1}, ordering_key="k1"),
    ]
    relayed = [job_id(1), job_id(1), job_id(1)]
    batch = [
        entry(relayed[0], plain),
        entry(relayed[1], plain, due_ms=later),
        entry(relayed[2], fifo, ordering="=k2"),
    ]
    for fields in batch:
        await pair.put(fields)
    running = await pair.run_relay()
    await eventually(pair.drained, what="the outbox relayed")
    await running.end()
    for answer, job, webhook_id in zip(local, relayed, (plain, plain, fifo), strict=True):
        mine = next(j["id"] for j in answer["jobs"] if j["webhook_id"] == webhook_id)
        assert await view(pair, job) == await view(pair, mine)
    assert pair.metrics.get("dispatcher_relay_sent_total", region="b") == 3
    keys = pair.b.store.keys  # the FIFO job heads its lane, as a local one does
    assert (
        await pair.b.store.redis.hget(keys.lane_heads, relayed[2]) == keys.lane(fifo, "k2").encode()
    )


async def test_a_batch_applied_twice_makes_each_job_once(pair: Pair) -> None:
    """Applying the same batch again (a resend) writes nothing and counts every job skipped."""
    plain = await pair.hook()
    batch = entries(*(entry(job_id(n), plain) for n in (1, 2, 3)))
    first = await outbox.apply(pair.b.store, "a", "x:1", batch)
    again = await outbox.apply(pair.b.store, "a", "x:1", batch)
    assert (first.done, first.applied, first.skipped) == (3, 3, 0)
    assert (again.done, again.applied, again.skipped) == (3, 0, 3)
    assert await pair.ready() == [e.fields[b"j"].decode() for e in batch]


async def test_a_relay_killed_before_its_ack_makes_no_duplicate(pair: Pair) -> None:
    """Entries applied in b but never acked (the relay died) are sent again by the next relay,
    found in b, acked, and counted resent and skipped, not written twice."""
    plain = await pair.hook()
    jobs = [job_id(n) for n in (1, 2, 3)]
    for job in jobs:
        await pair.put(entry(job, plain))
    await outbox.ensure_group(pair.a, "b")
    layout = await pair.a.read_layout()
    token = await outbox.acquire(pair.a, "b", layout.incarnation or "-")
    assert token is not None
    read = await outbox.read_new(pair.a, "b", "dead-relay", token, 0)
    assert read is not None
    assert (await outbox.apply(pair.b.store, "a", token, read)).applied == 3
    await pair.a.redis.delete(pair.a.keys.outbox_lease("b"))  # its lease ran out
    running = await pair.run_relay()  # the dead one's entries are still pending in its name
    await eventually(pair.drained, what="the outbox relayed")
    await running.end()
    assert await pair.ready() == jobs
    counted = {
        name: pair.metrics.get(f"dispatcher_relay_{name}_total", region="b")
        for name in ("sent", "resent", "skipped", "reapplied")
    }
    assert counted == {"sent": 0, "resent": 3, "skipped": 3, "reapplied": 0}
    assert await pair.a.redis.xpending(pair.a.keys.outbox("b"), RELAY_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_a_lower_fence_token_is_refused(pair: Pair) -> None:
    """Once a holder's token applied in b, an older holder of the same incarnation (a paused
    one) is refused whole; a new incarnation (region a's Redis wiped) is not."""
    plain = await pair.hook()
    assert (await outbox.apply(pair.b.store, "a", "inc:5", entries())).done == 0
    refused = await outbox.apply(pair.b.store, "a", "inc:3", entries(entry(job_id(), plain)))
    assert (refused.fenced, refused.fence) == (True, "inc:5")
    assert await pair.ready() == []
    anew = await outbox.apply(pair.b.store, "a", "other:1", entries(entry(job_id(), plain)))
    assert (anew.fenced, anew.applied) == (False, 1)


async def test_a_fenced_relay_takes_a_newer_token_and_goes_on(pair: Pair) -> None:
    """A relay whose token b refuses counts it, takes a token above the fence and relays."""
    plain = await pair.hook()
    layout = await pair.a.read_layout()
    await pair.b.store.redis.set(pair.b.store.keys.relay_fence("a"), f"{layout.incarnation}:7")
    job = job_id()
    await pair.put(entry(job, plain))
    running = await pair.run_relay()
    await eventually(pair.drained, what="the outbox relayed")
    await running.end()
    assert await pair.ready() == [job]
    assert pair.metrics.get("dispatcher_relay_fenced_total", region="b") == 1
    fence = await pair.b.store.redis.get(pair.b.store.keys.relay_fence("a"))
    assert fence == f"{layout.incarnation}:8".encode()


async def test_a_job_waits_for_its_webhooks_record(pair: Pair) -> None:
    """A job whose webhook b has no record of yet waits, with the entries after it, and is
    written once the record arrives (not dead-lettered); a deleted webhook's job is written
    for b's gate to dead-letter."""
    waiting, plain = await pair.hook(), await pair.hook()
    webhooks = pair.b.store.keys.webhooks
    record = await pair.b.store.redis.hget(webhooks, waiting)
    await pair.b.store.redis.hdel(webhooks, waiting)  # not replicated to b yet
    gone = new_webhook_id()
    await pair.b.store.redis.hset(pair.b.store.keys.versions, gone, "1 a -")
    jobs = [job_id(1), job_id(1), job_id(1)]
    for job, webhook_id in zip(jobs, (gone, waiting, plain), strict=True):
        await pair.put(entry(job, webhook_id))
    with capture_logs() as logs:
        running = await pair.run_relay()
        await eventually(
            lambda: any(e["event"] == "relay.waiting_for_webhook" for e in logs),
            what="the relay waiting",
        )
        assert await pair.ready() == jobs[:1]
        await pair.b.store.redis.hset(webhooks, waiting, record)  # the replicator's part
        await eventually(pair.drained, what="the outbox relayed")
        await running.end()
    assert await pair.ready() == jobs
    assert await pair.b.store.redis.xlen(pair.b.store.keys.dlq) == 0
    waits = [e for e in logs if e["event"] == "relay.waiting_for_webhook"]
    assert [e["webhook_id"] for e in waits] == [waiting]


async def test_a_malformed_entry_is_dead_lettered_in_b(pair: Pair) -> None:
    """An entry that cannot be a job goes to b's DLQ as malformed, whole, and the entries
    after it are written."""
    plain = await pair.hook()
    bad, good = entry(job_id(), plain, stream="No Such Queue"), entry(job_id(), plain)
    result = await outbox.apply(pair.b.store, "a", "x:1", entries(bad, good))
    assert (result.done, result.applied, result.malformed) == (2, 1, 1)
    assert await pair.ready() == [good[b"j"].decode()]
    assert not await pair.b.store.redis.hexists(pair.b.store.keys.jobs, bad[b"j"].decode())
    [(_, dead)] = await stream_entries(pair.b.store.redis, pair.b.store.keys.dlq)
    assert dead[b"r"] == b"malformed"
    assert orjson.loads(dead[b"raw"])["j"] == bad[b"j"].decode()


async def test_fifo_order_and_nothing_lost_across_b_down(pair: Pair) -> None:
    """While b's Redis is down the outbox grows and a's relay waits (logged once, and its end
    once); once b is back, every entry arrives and a FIFO webhook's lane holds them in publish
    order."""
    fifo = await pair.hook(ordering="fifo")
    jobs = [job_id(n) for n in range(1, 51)]
    for job in jobs[:25]:
        await pair.put(entry(job, fifo, ordering="-"))
    lane = pair.b.store.keys.lane(fifo)

    async def lane_length(n: int) -> bool:
        return int(await pair.b.store.redis.llen(lane)) == n

    with capture_logs() as logs:
        running = await pair.run_relay()
        await eventually(lambda: lane_length(25), what="25 jobs relayed")
        pair.servers.b.stop()
        try:
            for job in jobs[25:]:
                await pair.put(entry(job, fifo, ordering="-"))
            unreachable = running.relay._unreachable["b"]
            await eventually(lambda: unreachable.failures >= 2, what="the relay failing")
            assert await pair.outbox_len() == 25
        finally:
            pair.servers.b.start()
        await eventually(pair.drained, what="the outbox relayed")
        await running.end()
    lane_ids = await cast("Awaitable[list[bytes]]", pair.b.store.redis.lrange(lane, 0, -1))
    assert [j.decode() for j in lane_ids] == jobs
    assert await pair.ready() == jobs[:1]  # only the head is queued
    keys = pair.b.store.keys
    assert await pair.b.store.redis.hget(keys.lanes_waiting, fifo) == b"49"
    said = [e["event"] for e in logs if e["event"].startswith("relay.")]
    assert (said.count("relay.unavailable"), said.count("relay.recovered")) == (1, 1)


async def test_b_delivers_relayed_jobs(pair: Pair, target: Target) -> None:
    """b's worker delivers the relayed jobs, each once."""
    plain = await pair.hook(target.url())
    jobs = [job_id(n) for n in (1, 2)]
    for job in jobs:
        await pair.put(entry(job, plain))
    workers = WorkerHarness(pair.servers.b.url, pair.prefix)
    await workers.start()
    try:
        running = await pair.run_relay()
        got = await target.wait_for(2)
        await running.end()
    finally:
        await workers.stop()
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(jobs)


async def test_without_regions_the_relay_does_nothing(servers: Servers) -> None:
    """Without regions the relay reads and writes nothing, and ends when told to."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    store = Store.open(servers.a.url, prefix=prefix)
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(Relay(Regions.single(store), Metrics(), consumer="c").run(stop))
        await asyncio.sleep(0)  # let it start
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        assert [k async for k in store.redis.scan_iter(f"{prefix}:*")] == []
    finally:
        await store.close()


async def test_each_shards_outbox_goes_to_the_same_shard_in_b(pair: Pair) -> None:
    """With two shards, a webhook of shard 1 gets its relayed job in b's shard 1, where its id
    finds it."""
    await pair.a.adopt_layout(2)
    await pair.b.store.adopt_layout(2)
    hook = await pair.hook()
    while shard_of(hook) != 1:  # ids spread over the shards by hash
        hook = await pair.hook()
    event_prefix = new_event_ids()[1]
    job = f"{shard_job_prefix(event_prefix, 1)}1~b"
    here = pair.a.shard(1)
    await here.redis.xadd(here.keys.outbox("b"), entry(job, hook))  # type: ignore[arg-type]
    running = await pair.run_relay()

    async def relayed() -> bool:
        return await get_job(pair.b.store, job) is not None

    await eventually(relayed, what="the job in b's shard 1")
    await running.end()
    assert await here.redis.xlen(here.keys.outbox("b")) == 0
    assert await pair.b.store.redis.hexists(pair.b.store.shard(1).keys.jobs, job)


async def test_a_frozen_holder_takes_no_entry_from_its_successor(pair: Pair) -> None:
    """A holder frozen past its lease (SIGSTOP) that wakes while its successor relays takes no
    new entry from the outbox: the successor relays every entry, a FIFO lane's in order."""
    fifo = await pair.hook(ordering="fifo")
    jobs = [job_id(n) for n in (1, 2, 3)]
    stop = asyncio.Event()
    stale = _Holder(Relay(pair.regions, pair.metrics, consumer="frozen"), pair.a, "b", stop)
    try:
        assert await stale.acquire()
        await outbox.ensure_group(pair.a, "b")
        await pair.put(entry(jobs[0], fifo, ordering="-"))
        assert len(await stale._read_new(stop)) == 1  # read, then frozen before its apply
        await pair.a.redis.delete(pair.a.keys.outbox_lease("b"))  # ... past its lease
        await pair.b.store.redis.client_pause(20_000, all=False)  # b holds the successor's apply
        try:
            running = await pair.run_relay()

            async def claimed() -> bool:
                found = await pair.a.redis.xpending(pair.a.keys.outbox("b"), RELAY_GROUP)
                return [c["name"] for c in found["consumers"]] == [b"relay-1"]

            await eventually(claimed, what="the successor sending the pending entry")
            await pair.put(entry(jobs[1], fifo, ordering="-"))
            woke = await stale._read_new(stop)  # the frozen holder wakes and reads on
        finally:
            await pair.b.store.redis.client_unpause()
        await eventually(pair.ready, what="the pending entry relayed")
        if woke:  # its apply comes after the successor's: fenced, but the entry is its own
            assert not await stale._send(woke, resent=False)
        await pair.put(entry(jobs[2], fifo, ordering="-"))
        await eventually(pair.drained, timeout_s=5, what="the outbox relayed")
        await running.end()
    finally:
        await stale.close()
    lane = pair.b.store.keys.lane(fifo)
    lane_ids = await cast("Awaitable[list[bytes]]", pair.b.store.redis.lrange(lane, 0, -1))
    assert [j.decode() for j in lane_ids] == jobs
    assert stale.token is None


async def test_a_write_failing_mid_batch_leaves_no_part_and_stops_the_line(pair: Pair) -> None:
    """A job whose write fails in b mid-batch (a key of the wrong type) leaves no part of it
    written, and the batches sent behind it on the line are refused, so none passes it."""
    plain, fifo = await pair.hook(), await pair.hook(ordering="fifo")
    keys = pair.b.store.keys
    await pair.b.store.redis.set(keys.lane_heads, "not a hash")
    jobs = [job_id(n) for n in range(1, 5)]
    line = outbox.ApplyLine.of(pair.b.store, "a")
    assert line is not None
    try:
        await line.send(
            "i:1", "+g1", entries(entry(jobs[0], plain), entry(jobs[1], fifo, ordering="-"))
        )
        await line.send("i:1", "=g1", entries(entry(jobs[2], plain)))
        await line.send("i:1", "+g2", entries(entry(jobs[3], plain)))  # a new generation

        async def done() -> bool:
            return jobs[3] in await pair.ready()

        await eventually(done, what="the three batches processed")
    finally:
        await line.close()
    assert await pair.ready() == [jobs[0], jobs[3]]
    assert not await pair.b.store.redis.hexists(keys.jobs, jobs[1])
    assert await pair.b.store.redis.llen(keys.lane(fifo)) == 0


async def test_a_cancelled_relay_ends_wherever_it_is(pair: Pair) -> None:
    """A relay cancelled at any moment (a daemon's side task at exit) ends, lease let go, even
    when the cancellation arrives inside a Redis call that loses it."""
    plain = await pair.hook()
    rng = random.Random(7)
    for n in range(40):
        await pair.put(entry(job_id(n + 1), plain))
        running = await pair.run_relay(f"relay-{n}")
        await asyncio.sleep(rng.uniform(0, 0.02))  # a moment anywhere in its work
        running.task.cancel()
        done, _ = await asyncio.wait({running.task}, timeout=10)
        assert done, f"relay-{n} still running after its cancellation"
    assert await pair.a.redis.get(pair.a.keys.outbox_lease("b")) is None


async def test_a_batch_b_turns_away_stops_the_batches_behind_it(pair: Pair) -> None:
    """A batch b turns away unrun (out of memory; busy, loading) stops the batches sent behind
    it on the line even when b, recovered, would take them: none passes it."""
    plain = await pair.hook()
    jobs = [job_id(n) for n in (1, 2, 3)]
    b = pair.b.store.redis
    line = outbox.ApplyLine.of(pair.b.store, "a")
    assert line is not None
    try:
        await line.send("i:1", "+g1", entries(entry(jobs[0], plain)))
        assert (await line.receive(1)).applied == 1
        await b.config_set("maxmemory", 1)
        try:
            await line.send("i:1", "=g1", entries(entry(jobs[1], plain)))
            with pytest.raises(rex.ResponseError, match="maxmemory"):  # read, the line kept
                await line._conn.read_response()
        finally:
            await b.config_set("maxmemory", 0)
        await line.send("i:1", "=g1", entries(entry(jobs[2], plain)))
        assert (await line.receive(1)).refused
    finally:
        await line.close()
    assert await pair.ready() == [jobs[0]]
