"""Every region holds every webhook: creates, updates and deletes made in one region reach
the others with a version per webhook, the last writer winning, and a region that was cut
off catches up (issue 22; dispatcher/replicator.py, queue/registry.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest
import structlog
import structlog.testing

from dispatcher import Client
from dispatcher.config import DeliveryConfig
from dispatcher.errors import InvalidField
from dispatcher.health import HealthWatch
from dispatcher.ids import shard_of
from dispatcher.metrics import Metrics
from dispatcher.model import Webhook
from dispatcher.queue import breakers, codec, pauses, registry, streams, webhooks
from dispatcher.queue.regions import Regions
from dispatcher.queue.streams import SettleKind, Settlement
from dispatcher.replicator import Replicator
from tests.helpers import RedisServer, eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from dispatcher.queue.store import Store
    from dispatcher.queue.streams import Claim

pytestmark = pytest.mark.xdist_group("regions")

NAMES = ("a", "b", "c")
_DRAINING = re.compile(rb',"draining":[12]}$')


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RedisServer]]:
    """One Redis per region (with AOF, so a stopped one comes back with its data)."""
    found = {
        name: RedisServer(tmp_path_factory.mktemp(f"region-{name}"), appendonly=True)
        for name in NAMES
    }
    for server in found.values():
        server.start()
    yield found
    for server in found.values():
        server.stop()


async def _hget(store: Store, key: str, field: str) -> bytes | None:
    return cast("bytes | None", await store.redis.hget(key, field))


class Mesh:
    """Three regions on one prefix of this test: a Client per region, and a replicator per
    region run as a task while ``replicating``."""

    def __init__(self, servers: dict[str, RedisServer], prefix: str) -> None:
        self.servers = servers
        self.urls = {name: server.url for name, server in servers.items()}
        self.clients = {name: Client.from_url(self.urls[name], prefix) for name in NAMES}
        self.metrics = {name: Metrics() for name in NAMES}
        self.regions: dict[str, Regions] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def store(self, name: str) -> Store:
        return self.clients[name].store

    async def open(self) -> None:
        for name in NAMES:
            await self.store(name).adopt_region(name, NAMES)

    def start(self) -> None:
        """Replicators with connections of their own to the other regions (read afresh)."""
        self._stop = asyncio.Event()
        for name in NAMES:
            self.regions[name] = Regions(self.store(name), name, self.urls)
            replicator = Replicator(self.regions[name], self.metrics[name], consumer=name)
            replicator.block_ms = 200
            self._tasks.append(asyncio.create_task(replicator.run(self._stop)))

    async def stop(self) -> None:
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*tasks)
        regions, self.regions = self.regions, {}
        for found in regions.values():
            await found.close()

    async def close(self) -> None:
        await self.stop()
        for name in NAMES:
            await self.clients[name].close()

    async def copy(self, name: str, webhook_id: str) -> tuple[bytes | None, bytes | None]:
        """Region ``name``'s record of the webhook (less its local draining mark) and version."""
        store = self.store(name).of_webhook(webhook_id)
        keys = store.keys
        record = await _hget(store, keys.webhooks, webhook_id)
        version = await _hget(store, keys.versions, webhook_id)
        return (_DRAINING.sub(b"}", record) if record else None), version

    async def agreed(self, webhook_id: str) -> tuple[bytes | None, bytes | None] | None:
        """The webhook's record and version when every region holds the same, else None."""
        copies = [await self.copy(name, webhook_id) for name in NAMES]
        return copies[0] if copies[0][1] is not None and copies.count(copies[0]) == 3 else None

    async def same_everywhere(self, webhook_id: str) -> tuple[bytes | None, bytes | None]:
        found: tuple[bytes | None, bytes | None] = await eventually(
            lambda: self.agreed(webhook_id), what="the same copy in a, b, c"
        )
        return found


@pytest.fixture
async def mesh(servers: dict[str, RedisServer]) -> AsyncIterator[Mesh]:
    found = Mesh(servers, f"t{uuid.uuid4().hex[:12]}")
    await found.open()
    found.start()
    yield found
    await found.close()


async def _create(mesh: Mesh, name: str, **fields: Any) -> str:
    hook = await mesh.clients[name].create_webhook("acme", "https://hooks.example.com/x", **fields)
    return str(hook["id"])


def _held(claim: Claim) -> Settlement:
    """The outcome a worker writes for a claimed job of a paused webhook (outcomes.hold)."""
    assert claim.inline is not None
    claim.inline.hold()
    record = codec.encode(claim.inline)
    return Settlement(claim, SettleKind.HELD, record, 1, "", b"", parked_for=claim.webhook_id)


def _version(raw: bytes | None) -> tuple[int, str]:
    assert raw is not None
    v, origin = raw.decode().split()[:2]
    return int(v), origin


async def test_a_webhook_created_in_one_region_reaches_the_others_with_its_version(
    mesh: Mesh,
) -> None:
    """A webhook created in A is in B and C with A's record, version and routing entry, and
    is A's webhook."""
    webhook_id = await _create(mesh, "a")
    record, version = await mesh.same_everywhere(webhook_id)
    assert record is not None
    assert Webhook.decode(record).region == "a"
    assert _version(version)[1] == "a"
    b = mesh.store("b").of_webhook(webhook_id)
    route = await b.redis.hget(b.keys.tenant("acme"), webhook_id)
    assert route is not None
    assert b'"r":"a"' in route
    assert (await mesh.clients["b"].get_webhook(webhook_id))["region"] == "a"
    assert mesh.metrics["b"].counters["dispatcher_registry_applied_total", (("region", "a"),)] >= 1
    with pytest.raises(InvalidField, match="region"):
        await _create(mesh, "a", region="z")


async def test_concurrent_changes_in_two_regions_converge_on_the_larger_version(
    mesh: Mesh,
) -> None:
    """Two PATCHes of one webhook made in A and C while they cannot see each other end as the
    one with the larger (version, region) in all three regions."""
    webhook_id = await _create(mesh, "a")
    await mesh.same_everywhere(webhook_id)
    await mesh.stop()
    await mesh.clients["a"].update_webhook(webhook_id, description="from a")
    await mesh.clients["c"].update_webhook(webhook_id, description="from c")
    versions = {name: _version((await mesh.copy(name, webhook_id))[1]) for name in ("a", "c")}
    winner = max(versions, key=lambda name: versions[name])
    mesh.start()
    record, version = await mesh.same_everywhere(webhook_id)
    assert record is not None
    assert Webhook.decode(record).description == f"from {winner}"
    assert _version(version) == versions[winner]


async def test_a_delete_beats_an_older_update_which_never_brings_the_webhook_back(
    mesh: Mesh,
) -> None:
    """An update made in C before a delete made in A, arriving in any order, leaves the
    webhook deleted everywhere with A's tombstone; the update applied late changes nothing."""
    webhook_id = await _create(mesh, "a")
    await mesh.same_everywhere(webhook_id)
    await mesh.stop()
    await mesh.clients["c"].update_webhook(webhook_id, description="late")
    updated, c_version = await mesh.copy("c", webhook_id)
    a = mesh.store("a")
    await eventually(lambda: _later(a, _version(c_version)[0]), what="A's clock past C's version")
    await mesh.clients["a"].delete_webhook(webhook_id)
    mesh.start()
    record, version = await mesh.same_everywhere(webhook_id)
    assert record is None
    assert version is not None
    assert version.decode().endswith(" a -")
    assert updated is not None
    late = registry.Write(webhook_id, c_version.decode() if c_version else "", updated)
    applied = await registry.apply(mesh.store("b").of_webhook(webhook_id), "c", [late], cursor=None)
    assert (applied.written, applied.superseded) == (0, 1)
    assert await mesh.copy("b", webhook_id) == (None, version)


async def _later(store: Store, ms: int) -> bool:
    seconds, micros = await store.redis.time()
    return seconds * 1000 + micros // 1000 > ms


async def test_a_record_from_before_regions_is_copied_as_its_regions(mesh: Mesh) -> None:
    """A webhook written in A's Redis before regions (no region, no version) reaches B as A's
    webhook, and a later write of it in A wins over that copy."""
    a = mesh.store("a")
    hook = Webhook.create(
        {"tenant_id": "acme", "url": "https://hooks.example.com/old"}, now_ms=1, shards=1
    )
    await a.redis.hset(a.keys.webhooks, hook.id, hook.encode())
    await a.redis.hset(a.keys.tenant("acme"), hook.id, hook.routing())
    b = mesh.store("b")
    await b.redis.delete(b.keys.registry_from("a"))  # as when regions are switched on: resync
    copied = await eventually(lambda: b.redis.hget(b.keys.webhooks, hook.id), what="B's copy")
    assert Webhook.decode(copied).region == "a"
    assert await b.redis.hget(b.keys.versions, hook.id) == b"0 a"
    await mesh.clients["a"].update_webhook(hook.id, description="now")
    record, _ = await mesh.same_everywhere(hook.id)
    assert record is not None
    assert Webhook.decode(record).description == "now"


async def test_a_region_whose_entries_were_trimmed_before_it_read_them_resyncs(
    mesh: Mesh,
) -> None:
    """B catches up on A's webhooks written while B did not read, though A's stream no longer
    holds them, deletes included."""
    deleted = await _create(mesh, "a")
    await mesh.same_everywhere(deleted)
    await mesh.stop()
    created = [await _create(mesh, "a") for _ in range(3)]
    await mesh.clients["a"].delete_webhook(deleted)
    a = mesh.store("a")
    await a.redis.xtrim(a.keys.registry, maxlen=0)
    mesh.start()
    for webhook_id in [*created, deleted]:
        await mesh.same_everywhere(webhook_id)
    assert (await mesh.copy("b", deleted))[0] is None
    assert mesh.metrics["b"].counters["dispatcher_registry_resyncs_total", (("region", "a"),)] >= 2


async def test_a_webhook_of_a_shard_this_region_does_not_serve_yet_is_copied_there(
    mesh: Mesh,
) -> None:
    """A webhook made in a shard of A that B has never served reaches B in that shard, and B
    serves the shard from then on."""
    await mesh.stop()
    a = mesh.store("a")
    await a.adopt_layout(2)
    made = [await _create(mesh, "a") for _ in range(24)]
    second = [webhook_id for webhook_id in made if shard_of(webhook_id) == 1]
    assert second
    mesh.start()
    await mesh.same_everywhere(second[-1])
    b = mesh.store("b")
    assert (await b.read_layout(max_age_s=0)).served == 2  # A's two shards
    assert (await b.read_layout()).shards == 1


async def test_a_region_whose_secrets_our_keys_cannot_open_is_not_copied(mesh: Mesh) -> None:
    """Records travel sealed: B does not apply C's webhooks while C's encryption canary names a
    key B lacks, and says so."""
    await mesh.stop()
    webhook_id = await _create(mesh, "c")
    c = mesh.store("c")
    await c.redis.set(c.keys.encryption, orjson.dumps({"kid": "k9", "check": "x"}))
    with structlog.testing.capture_logs() as logs:
        mesh.start()
        await eventually(
            lambda: any(e["event"] == "registry.key_mismatch" and e["region"] == "c" for e in logs),
            what="the refusal",
        )
    b = mesh.store("b").of_webhook(webhook_id)
    assert await _hget(b, b.keys.webhooks, webhook_id) is None


async def test_a_regions_own_draining_mark_survives_a_write_from_another_region(
    mesh: Mesh,
) -> None:
    """The draining mark B's pause release keeps at the end of its record of a B webhook is
    still there after a PATCH made in A is applied in B, and never reaches A or C."""
    webhook_id = await _create(mesh, "b")
    record, _ = await mesh.same_everywhere(webhook_id)
    assert record is not None
    b = mesh.store("b").of_webhook(webhook_id)
    await b.redis.hset(b.keys.webhooks, webhook_id, record[:-1] + b',"draining":2}')
    await mesh.clients["a"].update_webhook(webhook_id, description="edited in a")
    record, _ = await mesh.same_everywhere(webhook_id)
    assert record is not None
    assert Webhook.decode(record).description == "edited in a"
    kept = await _hget(b, b.keys.webhooks, webhook_id)
    assert kept is not None
    assert kept.endswith(b',"draining":2}')
    for name in ("a", "c"):
        store = mesh.store(name).of_webhook(webhook_id)
        other = await _hget(store, store.keys.webhooks, webhook_id)
        assert other is not None
        assert not _DRAINING.search(other)


async def test_a_resume_made_in_another_region_puts_back_held_jobs_only_in_the_webhooks(
    mesh: Mesh,
) -> None:
    """Unpausing in A a paused B webhook with a job held in B starts the resume in B (its held
    job goes back to its queue at B's tick), and A keeps no resume state of its own."""
    client_b = mesh.clients["b"]
    webhook_id = await _create(mesh, "b", paused=True)
    await mesh.same_everywhere(webhook_id)
    await client_b.publish("acme", "order.created", {"n": 0})
    b = mesh.store("b").of_webhook(webhook_id)
    await streams.ensure_group(b, "default")
    claims, _ = await streams.claim_new(b, ("default",), "w1", budget=10)
    [claim] = claims
    assert await streams.settle(b, "w1", [_held(claim)]) == []
    assert (await pauses.held(b)).by_webhook == {webhook_id: 1}
    await mesh.clients["a"].update_webhook(webhook_id, paused=False)
    await eventually(lambda: b.redis.sismember(b.keys.releasing, webhook_id), what="B resuming")
    a = mesh.store("a").of_webhook(webhook_id)
    assert not await a.redis.sismember(a.keys.releasing, webhook_id)
    assert not _DRAINING.search(await _hget(a, a.keys.webhooks, webhook_id) or b"")
    await pauses.tick(b)
    assert (await pauses.held(b)).by_webhook == {}


async def test_a_delete_made_in_another_region_clears_the_webhooks_state_in_its_own(
    mesh: Mesh,
) -> None:
    """Deleting in A a B webhook clears in B what B's own delete would (its rate-limit state
    and run of failures) and hands its held jobs to B's tick; A keeps none of it."""
    webhook_id = await _create(mesh, "b")
    await mesh.same_everywhere(webhook_id)
    b = mesh.store("b").of_webhook(webhook_id)
    await b.redis.hset(b.keys.failing, webhook_id, 1)
    await b.redis.hset(b.keys.rates, webhook_id, "1 1")
    await mesh.clients["a"].delete_webhook(webhook_id)
    await eventually(lambda: b.redis.sismember(b.keys.releasing, webhook_id), what="B's cleanup")
    assert await _hget(b, b.keys.failing, webhook_id) is None
    assert await _hget(b, b.keys.rates, webhook_id) is None
    a = mesh.store("a").of_webhook(webhook_id)
    assert not await a.redis.sismember(a.keys.releasing, webhook_id)


async def test_a_region_that_was_down_catches_up_when_it_returns(mesh: Mesh) -> None:
    """Webhooks created, changed and deleted in A while C's Redis is stopped reach C once it
    is back, and A and B go on replicating meanwhile."""
    gone = await _create(mesh, "a")
    await mesh.same_everywhere(gone)
    server = mesh.servers["c"]
    server.stop()
    try:
        created = await _create(mesh, "b")
        a = mesh.store("a").of_webhook(created)
        await eventually(
            lambda: a.redis.hget(a.keys.webhooks, created), what="A copying B meanwhile"
        )
        await mesh.clients["a"].update_webhook(created, description="while c was down")
        await mesh.clients["a"].delete_webhook(gone)
    finally:
        server.start()
    for webhook_id in (created, gone):
        await mesh.same_everywhere(webhook_id)
    record, _ = await mesh.copy("c", created)
    assert record is not None
    assert Webhook.decode(record).description == "while c was down"


async def test_without_regions_no_version_or_registry_key_is_written(
    store: Store, redis: Any, prefix: str
) -> None:
    """A deployment without regions writes no version or registry key when webhooks are
    created, changed and deleted, answers them without a region, and refuses one."""
    with pytest.raises(InvalidField, match="region"):
        await webhooks.create_webhook(
            store, {"tenant_id": "acme", "url": "https://hooks.example.com/x", "region": "a"}
        )
    hook = await webhooks.create_webhook(
        store, {"tenant_id": "acme", "url": "https://hooks.example.com/x"}
    )
    await webhooks.update_webhook(store, hook.id, {"description": "x", "region": None})
    await webhooks.delete_webhook(store, hook.id)
    keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
    assert not [key for key in keys if b"versions" in key or b"registry" in key]
    assert hook.region is None


async def test_enabling_in_another_region_closes_the_breaker_in_the_webhooks_own(
    mesh: Mesh,
) -> None:
    """``PATCH {"enabled": true}`` made in A on an enabled B webhook whose breaker is open in B
    gives it the fresh start B's own API would: its breaker closed and its run of failures
    forgotten, in B."""
    webhook_id = await _create(mesh, "b")
    await mesh.same_everywhere(webhook_id)
    b = mesh.store("b").of_webhook(webhook_id)
    await b.redis.hset(b.keys.breakers, webhook_id, b'{"s":"open","b":0,"o":1,"f":1}')
    await b.redis.hset(b.keys.failing, webhook_id, 1)
    await mesh.clients["a"].update_webhook(webhook_id, enabled=True)

    async def fresh() -> bool:
        found = await breakers.states(b, [webhook_id])
        closed = webhook_id in found and found[webhook_id].state == breakers.CLOSED
        return closed and await _hget(b, b.keys.failing, webhook_id) is None

    await eventually(fresh, what="B's breaker closed")


async def test_a_region_does_not_auto_disable_a_webhook_moved_out_of_it(mesh: Mesh) -> None:
    """A webhook failing in A for longer than ``delivery.disable_after_s`` and moved to B is not
    disabled by A's breaker tick (A's failures say nothing of B's deliveries); one that stayed
    in A is."""
    moved, stayed = await _create(mesh, "a"), await _create(mesh, "a")
    a = mesh.store("a")
    for webhook_id in (moved, stayed):
        shard = a.of_webhook(webhook_id)
        await shard.redis.hset(shard.keys.breakers, webhook_id, b'{"s":"open","b":0,"o":1,"f":1}')
        await shard.redis.hset(shard.keys.failing, webhook_id, 1)
    await mesh.clients["a"].update_webhook(moved, region="b")
    await mesh.same_everywhere(moved)
    cfg = dataclasses.replace(DeliveryConfig(), disable_after_s=1)
    watch = HealthWatch(a, [a], Metrics(), asyncio.Event(), lambda: cfg)
    await watch._tend_shard(a)
    assert not (await mesh.clients["a"].get_webhook(stayed))["enabled"]
    assert (await mesh.clients["a"].get_webhook(moved))["enabled"]
    # and A forgot its breaker and run of failures: its tick no longer lists it
    assert not (await breakers.tick(a, probe_timeout_s=30, disable_after_s=1)).to_disable


async def test_a_webhook_answered_by_another_region_shows_its_breaker_from_its_own(
    mesh: Mesh,
) -> None:
    """A's API answers a B webhook with the breaker and run of failures B's daemons keep for
    it, as B's API does."""
    webhook_id = await _create(mesh, "b")
    await mesh.same_everywhere(webhook_id)
    b = mesh.store("b").of_webhook(webhook_id)
    await b.redis.hset(b.keys.breakers, webhook_id, b'{"s":"open","b":0,"o":1,"f":1}')
    await b.redis.hset(b.keys.failing, webhook_id, 1)
    prefix = mesh.store("a").keys.prefix
    async with Client.from_url(mesh.urls["a"], prefix, region="a", regions=mesh.urls) as client:
        seen = await client.get_webhook(webhook_id)
        [listed] = (await client.list_webhooks("acme"))["items"]
    own = await mesh.clients["b"].get_webhook(webhook_id)
    assert own["breaker"] is not None
    for view in (seen, listed):
        assert view["breaker"] == own["breaker"]
        assert view["failing_since"] == own["failing_since"]


async def test_a_region_reading_on_after_its_last_entry_was_trimmed_does_not_resync(
    mesh: Mesh,
) -> None:
    """B, which applied every entry of A's stream, reads A's next write from the stream after
    A's trim of every entry past its age (a quiet week), with no resync of A's records."""
    first = await _create(mesh, "a")
    await mesh.same_everywhere(first)
    await mesh.stop()
    a = mesh.store("a").of_webhook(first)
    _, version = await mesh.copy("a", first)
    await eventually(lambda: _later(a, _version(version)[0]), what="A's clock past the entry")
    await registry.trim(a, 0)
    key = "dispatcher_registry_resyncs_total", (("region", "a"),)
    resyncs = mesh.metrics["b"].counters[key]
    later = await _create(mesh, "a")
    mesh.start()
    await mesh.same_everywhere(later)
    assert mesh.metrics["b"].counters[key] == resyncs


async def test_a_region_with_no_other_region_yet_still_trims_its_registry(store: Store) -> None:
    """A deployment whose ``[regions]`` names only its own region still drops its registry
    entries past their age (each holds a whole record), though there is nobody to copy to."""
    await store.adopt_region("solo", ("solo",))
    await store.redis.xadd(store.keys.registry, {"w": "x"}, id="1-0")  # a week old and more
    await webhooks.create_webhook(store, {"tenant_id": "acme", "url": "https://x.example.com/"})
    regions = Regions(store, "solo", {"solo": "redis://unused"})
    stop = asyncio.Event()
    task = asyncio.create_task(Replicator(regions, Metrics(), consumer="solo").run(stop))
    try:
        await eventually(
            lambda: _first_entry_gone(store), what="the old entry trimmed", timeout_s=5
        )
    finally:
        stop.set()
        await task
        await regions.close()


async def _first_entry_gone(store: Store) -> bool:
    first = cast("list[tuple[bytes, Any]]", await store.redis.xrange(store.keys.registry, count=1))
    return bool(first) and first[0][0] != b"1-0"


async def test_a_region_that_lost_its_last_writes_gets_them_back_from_the_others(
    mesh: Mesh,
) -> None:
    """A's Redis failing over to a replica that missed A's last webhook write, which B and C
    had applied, gets that write back from them, and A's next write reaches them."""
    webhook_id = await _create(mesh, "a")
    await mesh.same_everywhere(webhook_id)
    a = mesh.store("a").of_webhook(webhook_id)
    keys = a.keys
    before = await _hget(a, keys.webhooks, webhook_id), await _hget(a, keys.versions, webhook_id)
    kept = cast("list[tuple[bytes, dict[bytes, bytes]]]", await a.redis.xrange(keys.registry))
    await mesh.clients["a"].update_webhook(webhook_id, description="lost in a")
    record, version = await mesh.same_everywhere(webhook_id)
    await mesh.stop()
    # the failover: A's record, version and registry stream as before that write
    assert before[0] is not None
    assert before[1] is not None
    await a.redis.hset(keys.webhooks, webhook_id, before[0])
    await a.redis.hset(keys.versions, webhook_id, before[1])
    await a.redis.delete(keys.registry)
    for entry_id, fields in kept:
        await a.redis.xadd(keys.registry, cast("dict[Any, Any]", fields), id=entry_id)
    mesh.start()
    assert await mesh.same_everywhere(webhook_id) == (record, version)
    await mesh.clients["a"].update_webhook(webhook_id, description="after the failover")
    record, _ = await mesh.same_everywhere(webhook_id)
    assert record is not None
    assert Webhook.decode(record).description == "after the failover"
