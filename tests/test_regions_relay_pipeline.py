"""The relay's pipeline (issue 22): across a slow link several batches of one outbox travel at
once, yet region b applies them in the outbox's order, stops them all behind a job whose
webhook it lacks, and a partition mid-way loses and duplicates nothing."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, cast

import pytest
from structlog.testing import capture_logs

from dispatcher.queue import outbox
from dispatcher.queue.regions import Regions
from dispatcher.relay import DEPTH
from tests.delay_proxy import DelayProxy
from tests.helpers import eventually
from tests.test_regions_relay import Pair, Servers, entries, entry, job_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Iterator

    from dispatcher.relay import _Holder
    from tests.test_regions_relay import Running

pytestmark = pytest.mark.xdist_group("regions")

#: Each way between region a's relay and region b's Redis.
DELAY_S = 0.03


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Region a's and region b's Redis, for the whole module."""
    yield from Servers.running(tmp_path_factory.mktemp("pipeline"))


class Far(Pair):
    """Regions a and b, a's relay reaching b through a delay proxy."""

    def __init__(self, servers: Servers, prefix: str, proxy: DelayProxy) -> None:
        super().__init__(servers, prefix)
        self.proxy = proxy
        self.regions = Regions(self.a, "a", {"a": servers.a.url, "b": proxy.url})

    async def put_many(self, batch: list[dict[bytes, bytes]]) -> str:
        """Outbox entries written together; the last one's id."""
        pipe = self.a.redis.pipeline(transaction=False)
        for fields in batch:
            pipe.xadd(self.a.keys.outbox("b"), fields)  # type: ignore[arg-type]
        sids = await pipe.execute()
        return cast("bytes", sids[-1]).decode()

    async def pause_b(self) -> None:
        """b takes no write (its scripts wait) until ``resume_b``: the relay's batches queue up."""
        await self.b.store.redis.client_pause(20_000, all=False)  # writes only

    async def resume_b(self) -> None:
        await self.b.store.redis.client_unpause()

    async def started(self) -> tuple[Running, _Holder]:
        """The relay running with its line to b open (one entry relayed), and its holder."""
        plain = await self.hook()
        running = await self.run_relay()
        await self.put(entry(job_id(), plain))
        await eventually(self.drained, what="the first entry relayed")
        return running, running.relay.holders[0, "b"]

    def count(self, name: str) -> float:
        return self.metrics.get(f"dispatcher_relay_{name}_total", region="b")


async def far_apart(servers: Servers, delay_s: float) -> AsyncIterator[Far]:
    """Regions a and b ``delay_s`` apart each way, until the generator ends (a fixture's body)."""
    proxy = await DelayProxy(servers.b.port, delay_s).start()
    found = Far(servers, f"t{uuid.uuid4().hex[:12]}", proxy)
    await found.start()
    try:
        yield found
    finally:
        await found.resume_b()
        await found.close()
        await proxy.close()


@pytest.fixture
async def far(servers: Servers) -> AsyncIterator[Far]:
    async for found in far_apart(servers, DELAY_S):
        yield found


async def sent(holder: _Holder, sid: str, batches: int) -> None:
    """Wait until the holder sent the entries up to ``sid`` in ``batches`` batches at least,
    none answered (b is paused)."""
    await eventually(lambda: holder.last_sent == sid, what=f"{sid} sent")
    assert holder.in_flight >= batches


async def test_batches_in_flight_keep_a_fifo_lanes_order(far: Far) -> None:
    """200 entries sent as several batches in flight at once reach a FIFO webhook's lane in b
    in publish order, each once."""
    fifo = await far.hook(ordering="fifo")
    running, holder = await far.started()
    jobs = [job_id(n) for n in range(1, 201)]
    await far.pause_b()
    for k in range(4):  # each part read and sent while the ones before wait in b
        part = [entry(job, fifo, ordering="-") for job in jobs[k * 50 : k * 50 + 50]]
        await sent(holder, await far.put_many(part), k + 1)
    await far.resume_b()
    await eventually(far.drained, what="the outbox relayed")
    await running.end()
    lane = far.b.store.keys.lane(fifo)
    lane_ids = await cast("Awaitable[list[bytes]]", far.b.store.redis.lrange(lane, 0, -1))
    assert [j.decode() for j in lane_ids] == jobs
    assert 4 <= holder.in_flight_peak <= DEPTH
    assert (far.count("sent"), far.count("skipped"), far.count("resent")) == (201, 0, 0)


async def test_a_missing_webhook_stops_the_batches_behind_it(far: Far) -> None:
    """A job whose webhook b lacks, in a batch with others in flight behind it: b applies
    nothing after it (the later batches are refused), and once the record arrives every job is
    queued in publish order, none twice."""
    plain, missing = await far.hook(), await far.hook()
    webhooks = far.b.store.keys.webhooks
    record = await far.b.store.redis.hget(webhooks, missing)
    await far.b.store.redis.hdel(webhooks, missing)  # not replicated to b yet
    running, holder = await far.started()
    first = await far.ready()
    jobs = [job_id(n) for n in range(1, 62)]
    parts = [
        [entry(job, plain) for job in jobs[:20]],
        [entry(job, missing if job == jobs[30] else plain) for job in jobs[20:41]],
        [entry(job, plain) for job in jobs[41:]],
    ]
    with capture_logs() as logs:
        await far.pause_b()
        for k, part in enumerate(parts):
            await sent(holder, await far.put_many(part), k + 1)
        await far.resume_b()
        await eventually(
            lambda: any(e["event"] == "relay.waiting_for_webhook" for e in logs),
            what="the relay waiting",
        )
        assert holder.refused >= 1
        assert await far.ready() == first + jobs[:30]
        await far.b.store.redis.hset(webhooks, missing, record)  # the replicator's part
        await eventually(far.drained, what="the outbox relayed")
        await running.end()
    assert await far.ready() == first + jobs
    assert (far.count("sent"), far.count("skipped"), far.count("resent")) == (62, 0, 0)


async def test_a_partition_mid_pipeline_loses_and_duplicates_nothing(far: Far) -> None:
    """The link to b cut while batches are in flight: once it heals every job is in b once, in
    publish order; what b had applied unacknowledged is skipped when sent again."""
    plain = await far.hook()
    running, holder = await far.started()
    first = await far.ready()
    jobs = [job_id(n) for n in range(1, 201)]
    await far.pause_b()
    for k in range(3):
        part = [entry(job, plain) for job in jobs[k * 40 : k * 40 + 40]]
        await sent(holder, await far.put_many(part), k + 1)
    far.proxy.partition()
    await far.resume_b()
    await far.put_many([entry(job, plain) for job in jobs[120:]])
    unreachable = running.relay._unreachable["b"]
    await eventually(lambda: unreachable.failures >= 1, what="the relay failing")
    far.proxy.heal()
    await eventually(far.drained, what="the outbox relayed")
    await running.end()
    assert await far.ready() == first + jobs
    assert far.count("sent") + far.count("skipped") == 201


async def test_b_refuses_a_batch_behind_one_that_stopped_and_a_stale_holder(far: Far) -> None:
    """On one line, a later batch applies only while its generation is b's: not after a batch
    that stopped at a missing webhook, not after an apply sent alone or another generation; a
    holder older than b's fence is refused whole."""
    plain, gone = await far.hook(), await far.hook()
    await far.b.store.redis.hdel(far.b.store.keys.webhooks, gone)
    line = outbox.ApplyLine.of(far.b.store, "a")
    assert line is not None
    jobs = [job_id(n) for n in range(1, 8)]
    try:

        async def send(token: str, sent: str, *fields: dict[bytes, bytes]) -> outbox.Applied:
            await line.send(token, sent, entries(*fields))
            return await line.receive(len(fields))

        assert (await send("i:5", "+g1", entry(jobs[0], plain))).applied == 1
        assert (await send("i:5", "=g1", entry(jobs[1], plain))).applied == 1
        stopped = await send("i:5", "+g2", entry(jobs[2], gone), entry(jobs[3], plain))
        assert (stopped.waiting, stopped.done) == (True, 0)
        assert (await send("i:5", "=g2", entry(jobs[4], plain))).refused
        assert (await send("i:5", "+g3", entry(jobs[4], plain))).applied == 1
        assert (await send("i:5", "=g2", entry(jobs[5], plain))).refused  # another generation
        await outbox.apply(far.b.store, "a", "i:5", entries(entry(jobs[5], plain)))
        assert (await send("i:5", "=g3", entry(jobs[6], plain))).refused  # one went alone
        fenced = await send("i:4", "+g4", entry(jobs[6], plain))
        assert (fenced.fenced, fenced.fence) == (True, "i:5")
    finally:
        await line.close()
    assert await far.ready() == [jobs[0], jobs[1], jobs[4], jobs[5]]
