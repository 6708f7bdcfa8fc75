"""The relay under random interleavings (issue 22): entries put in region a's outbox while
relays start, stop, are cancelled, lose their lease to another one still running (a holder
frozen past its lease), the link to b is cut and healed and b stalls; checked against a
model: every entry a job in b exactly once, each FIFO lane in outbox order.

``DISPATCHER_RELAY_SEEDS=<n>`` runs n random seeds instead of the fixed ones (an
exploration), ``DISPATCHER_RELAY_SEEDS=<s>,<s>,`` the seeds named."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import TYPE_CHECKING, cast

import pytest

from tests.helpers import eventually, stream_entries
from tests.test_regions_relay import Servers, entry, job_id
from tests.test_regions_relay_pipeline import Far, far_apart

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Iterator

    from tests.test_regions_relay import Running

pytestmark = pytest.mark.xdist_group("regions")

SEEDS = (1, 2)
#: Ordering keys of FIFO entries: the keyless lane, odd characters, a long one, a NUL.
KEYS = (None, "k:1", "ü=ü", "x" * 200, "a\x00b")
STEPS = 40


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    yield from Servers.running(tmp_path_factory.mktemp("explore"))


@pytest.fixture
async def far(servers: Servers) -> AsyncIterator[Far]:
    async for found in far_apart(servers, 0.005):
        yield found


def _seeds() -> list[int]:
    wanted = os.environ.get("DISPATCHER_RELAY_SEEDS")
    if wanted and "," in wanted:
        return [int(seed) for seed in wanted.split(",") if seed]
    if wanted:
        return [random.randrange(1 << 30) for _ in range(int(wanted))]
    return list(SEEDS)


class Chaos:
    """Region a's relays and the link to b, pushed around by one seeded random source, and
    the model: every job put, and each FIFO lane's jobs in outbox order."""

    def __init__(self, far: Far, seed: int) -> None:
        self.far, self.rng = far, random.Random(seed)
        self.every: list[str] = []
        self.lanes: dict[str, list[str]] = {}
        self.relays: list[Running] = []
        self.started = 0
        self.paused = False
        self.plain = self.fifo = ""
        self.record: bytes | None = None  # the FIFO webhook's record while b lacks it

    async def setup(self) -> None:
        self.plain, self.fifo = await self.far.hook(), await self.far.hook(ordering="fifo")
        await self.start()

    async def step(self) -> None:
        actions = {
            self.put: 8,
            self.start: 2,
            self.end: 1,
            self.cancel: 1,
            self.expire: 2,
            self.cut: 1,
            self.heal: 1,
            self.pause: 1,
            self.resume: 1,
            self.forget: 1,
            self.remember: 1,
        }
        action = self.rng.choices(list(actions), weights=list(actions.values()))[0]
        await action()
        await asyncio.sleep(self.rng.uniform(0, 0.05))  # let the relays run a while

    async def put(self) -> None:
        rng, batch = self.rng, []
        for _ in range(rng.randint(1, 60)):
            job = job_id(len(self.every) + 1)
            self.every.append(job)
            if rng.random() < 0.3:
                batch.append(entry(job, self.plain, payload=rng.randbytes(rng.randint(0, 64))))
                continue
            key = rng.choice(KEYS)
            later = int(time.time() * 1000) + 3_600_000 if rng.random() < 0.1 else 0
            ordering = "-" if key is None else f"={key}"
            batch.append(entry(job, self.fifo, ordering=ordering, due_ms=later))
            self.lanes.setdefault(self.far.b.store.keys.lane(self.fifo, key), []).append(job)
        await self.far.put_many(batch)

    async def start(self) -> None:
        if len(self.relays) < 3:
            self.started += 1
            self.relays.append(await self.far.run_relay(f"relay-{self.started}"))

    async def end(self) -> None:
        if self.relays:
            await self.relays.pop(self.rng.randrange(len(self.relays))).end()

    async def cancel(self) -> None:
        if self.relays:
            running = self.relays.pop(self.rng.randrange(len(self.relays)))
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)

    async def expire(self) -> None:
        """The holder froze past its lease: another relay may take it while it goes on."""
        await self.far.a.redis.delete(self.far.a.keys.outbox_lease("b"))

    async def cut(self) -> None:
        self.far.proxy.partition()

    async def heal(self) -> None:
        self.far.proxy.heal()

    async def pause(self) -> None:
        if not self.paused:
            await self.far.pause_b()
            self.paused = True

    async def resume(self) -> None:
        if self.paused:
            await self.far.resume_b()
            self.paused = False

    async def forget(self) -> None:
        """b loses the FIFO webhook's record (its replication not there yet): its jobs wait."""
        if self.record is None and not self.paused:  # (b paused takes no write)
            redis, webhooks = self.far.b.store.redis, self.far.b.store.keys.webhooks
            self.record = cast("bytes", await redis.hget(webhooks, self.fifo))
            await redis.hdel(webhooks, self.fifo)

    async def remember(self) -> None:
        """The registry replicator brings the record back."""
        if self.record is not None and not self.paused:
            redis, webhooks = self.far.b.store.redis, self.far.b.store.keys.webhooks
            await redis.hset(webhooks, self.fifo, self.record)
            self.record = None

    async def settle(self, seed: int) -> None:
        """All well again: the outbox drains, and the relays end."""
        await self.heal()
        await self.resume()
        await self.remember()
        if not self.relays:
            await self.start()
        await eventually(self.far.drained, timeout_s=30, what=f"the outbox relayed (seed {seed})")
        for running in self.relays:
            await running.end()


@pytest.mark.parametrize("seed", _seeds())
async def test_random_interleavings_keep_every_job_once_and_lanes_in_order(
    far: Far, seed: int
) -> None:
    """Whatever happens to the relays and the link, once all is well again every entry is a
    job in b exactly once and each FIFO lane holds its jobs in outbox order."""
    chaos = Chaos(far, seed)
    await chaos.setup()
    for _ in range(STEPS):
        await chaos.step()
    await chaos.settle(seed)
    redis, keys = far.b.store.redis, far.b.store.keys
    held = await redis.hmget(keys.jobs, chaos.every)
    assert [j for j, record in zip(chaos.every, held, strict=True) if record is None] == []
    for lane, jobs in chaos.lanes.items():
        found = await cast("Awaitable[list[bytes]]", redis.lrange(lane, 0, -1))
        assert [j.decode() for j in found] == jobs, f"seed {seed}: lane {lane!r}"
    ready = [f[b"j"].decode() for _, f in await stream_entries(redis, keys.ready("default"))]
    assert len(ready) == len(set(ready)), f"seed {seed}: a job queued twice"
    behind = {job for jobs in chaos.lanes.values() for job in jobs[1:]}
    assert not behind & set(ready), f"seed {seed}: a lane job queued behind its head"
    laned = {job for jobs in chaos.lanes.values() for job in jobs}
    assert {j for j in chaos.every if j not in laned} <= set(ready)
