"""dispatcher on a real 3-primary Redis Cluster started on loopback ports for this module.

Every key shares one hash tag, so all of them live on the primary owning that slot; these
tests run the core behaviours through ``redis+cluster://`` URLs (in-process workers and real
``dispatcher run`` processes) and check that nothing lands anywhere else.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import orjson
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from dispatcher import Client, DispatcherError, shapes
from dispatcher.ids import shard_of
from dispatcher.queue import pauses, stats
from dispatcher.queue.keys import Keys
from tests.conftest import WorkerHarness
from tests.helpers import (
    ClusterServers,
    Daemon,
    daemon_env,
    eventually,
    hooks_in_every_shard,
    log_events,
    redis_cli,
    stop_daemons,
)
from tests.lane_target import LaneTarget
from tests.target import Reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.target import Target


@pytest.fixture
async def raw(cluster: ClusterServers, prefix: str) -> AsyncIterator[RedisCluster]:
    """A plain redis-py cluster client; removes this test's keys afterwards."""
    conn = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.ports[0])])
    await conn.initialize()
    yield conn
    for key in [k async for k in conn.scan_iter(f"{prefix}:*", count=1000)]:
        await conn.delete(key)
    await conn.aclose()


@pytest.fixture
async def cclient(cluster: ClusterServers, prefix: str, raw: RedisCluster) -> AsyncIterator[Client]:
    async with Client.from_url(cluster.url, prefix=prefix) as c:
        yield c


@pytest.fixture
async def cworkers(
    cluster: ClusterServers, prefix: str, raw: RedisCluster
) -> AsyncIterator[WorkerHarness]:
    harness = WorkerHarness(cluster.url, prefix)
    yield harness
    await harness.stop()


async def _state(client: Client, job_id: str, state: str) -> shapes.Job | None:
    job = await client.get_job(job_id)
    return job if job is not None and job["state"] == state else None


async def _keys_by_node(conn: RedisCluster, prefix: str) -> dict[str, set[int]]:
    """Node name -> the slots of this test's keys stored there."""
    found: dict[str, set[int]] = {}
    for node in conn.get_primaries():
        async for key in conn.scan_iter(f"{prefix}:*", count=1000, target_nodes=node):
            found.setdefault(node.name, set()).add(key_slot(key))
    return found


async def test_publish_is_delivered_and_every_key_sits_in_one_slot(
    cclient: Client, cworkers: WorkerHarness, target: Target, raw: RedisCluster, prefix: str
) -> None:
    """A published event is delivered through the cluster, and every key lands in one slot."""
    await cclient.create_webhook("acme", target.url())
    job_id = (await cclient.publish("acme", "order.created", {"n": 1}))["jobs"][0]["id"]
    await cworkers.start()
    [request] = await target.wait_for(1)
    assert orjson.loads(request.body) == {"n": 1}
    assert request.headers["webhook-id"] == job_id
    await eventually(lambda: _state(cclient, job_id, "delivered"), what="delivered")
    by_node = await _keys_by_node(raw, prefix)
    assert len(by_node) == 1, by_node
    [(node, slots)] = by_node.items()
    assert len(slots) == 1
    home = raw.get_node_from_key(f"{prefix}:{{0}}:jobs")
    assert home is not None
    assert node == home.name


async def test_a_failed_attempt_is_retried_then_delivered(
    cclient: Client, cworkers: WorkerHarness, target: Target
) -> None:
    """A 500 is retried by the backoff policy and the second attempt delivers the job."""
    target.script("/hook", Reply(500), Reply(200))
    await cclient.create_webhook("acme", target.url())
    job_id = (await cclient.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await cworkers.start()
    job = await eventually(lambda: _state(cclient, job_id, "delivered"), what="delivered")
    assert [a["status"] for a in job["attempts"]] == [500, 200]
    assert target.count() == 2


async def test_dead_letter_then_replay(
    cclient: Client, cworkers: WorkerHarness, target: Target
) -> None:
    """A job failing every attempt goes to the DLQ, and a replay delivers it."""
    target.script("/hook", Reply(500), Reply(500), Reply(200))
    await cclient.create_webhook("acme", target.url())
    job_id = (await cclient.publish("acme", "a.b", {}))["jobs"][0]["id"]
    await cworkers.start(max_attempts=2)
    await eventually(lambda: _state(cclient, job_id, "dead"), what="dead")
    page = await cclient.list_dlq()
    assert [item["id"] for item in page["items"]] == [job_id]
    assert (await cclient.replay([job_id]))["replayed"] == 1
    job = await eventually(lambda: _state(cclient, job_id, "delivered"), what="replayed")
    assert [a["status"] for a in job["attempts"]] == [500, 500, 200]
    assert (await cclient.list_dlq())["items"] == []


async def test_shards_spread_over_the_nodes_and_deliver(
    cclient: Client, cworkers: WorkerHarness, target: Target, raw: RedisCluster, prefix: str
) -> None:
    """With redis.shards = 3 each shard's keys sit on a different primary of the evenly split
    cluster; an event fanned out over all of them is delivered from each, and the status names
    every node as holding keys."""
    await cclient.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(cclient, target, 3, per_shard=1)
    answer = await cclient.publish("acme", "a.b", {})
    [batch] = await cclient.publish_many([{"tenant_id": "acme", "event_type": "b", "payload": {}}])
    assert isinstance(batch, dict)
    assert len(batch["jobs"]) == len(hooks)
    await cworkers.start()
    await target.wait_for(2 * len(hooks), timeout_s=15)
    for job in answer["jobs"] + batch["jobs"]:
        await eventually(lambda j=job["id"]: _state(cclient, j, "delivered"))
    by_node = await _keys_by_node(raw, prefix)
    assert len(by_node) == 3, by_node
    assert all(len(slots) == 1 for slots in by_node.values())
    facts = (await cclient.status())["redis"]
    assert facts["shards"] == 3
    assert all(node["holds_keys"] for node in facts["nodes"])


async def test_identical_events_are_enqueued_once_across_the_nodes(
    cclient: Client, target: Target, raw: RedisCluster, prefix: str
) -> None:
    """With 3 shards on 3 primaries, identical events published at once (one by one and in a
    batch) make one event: one job per webhook, and the status counts the duplicates."""
    await cclient.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(cclient, target, 3, per_shard=1)
    event = {"tenant_id": "acme", "event_type": "a.b", "payload": {"n": 1}, "dedup_window_s": 60}
    singles = await asyncio.gather(
        *(cclient.publish("acme", "a.b", {"n": 1}, dedup_window_s=60) for _ in range(10))
    )
    batch = await cclient.publish_many([event, event])
    answers = [*singles, *[a for a in batch if isinstance(a, dict)]]
    assert len(answers) == 12
    assert sum(not a["deduplicated"] for a in answers) == 1
    assert len({(a["event_id"], len(a["jobs"])) for a in answers}) == 1
    assert answers[0]["matched"] == len(hooks)
    queued = [await raw.xlen(Keys(prefix, k).ready("default")) for k in range(3)]
    assert sum(queued) == len(hooks)
    assert (await cclient.status())["deduplicated_recent"]["count"] == 11


async def test_status_shows_the_cluster(cclient: Client, raw: RedisCluster, prefix: str) -> None:
    """Client.status() counts the queue and describes the cluster: every node, one holding keys."""
    await cclient.create_webhook("acme", "http://127.0.0.1:9/hook")
    await cclient.publish("acme", "a.b", {})
    status = await cclient.status()
    assert status["queued"] == 1
    facts = status["redis"]
    assert facts["mode"] == "cluster"
    assert facts["maxmemory_policy"] == "noeviction"
    assert len(facts["nodes"]) == 3
    home = raw.get_node_from_key(f"{prefix}:{{0}}:jobs")
    assert home is not None
    assert [n["node"] for n in facts["nodes"] if n["holds_keys"]] == [home.name] == [facts["node"]]
    assert {n["role"] for n in facts["nodes"]} == {"master"}


async def test_rate_limited_webhook_is_paced(
    cclient: Client, cworkers: WorkerHarness, target: Target
) -> None:
    """A webhook's rate limit paces its deliveries on a cluster as on one server."""
    await cclient.create_webhook("acme", target.url(), rate_limit={"per_second": 10, "burst": 1})
    ids = [(await cclient.publish("acme", "a.b", {"i": i}))["jobs"][0]["id"] for i in range(8)]
    await cworkers.start()
    got = await target.wait_for(8, timeout_s=15)
    assert got[-1].at - got[0].at > 7 * 0.1 * 0.9  # 10/s: 7 intervals of 0.1 s
    for job_id in ids:
        job = await eventually(lambda job_id=job_id: _state(cclient, job_id, "delivered"))
        assert len(job["attempts"]) == 1


@pytest.mark.slow
async def test_daemon_delivers_and_a_killed_daemons_job_is_reclaimed(
    cluster: ClusterServers, cclient: Client, prefix: str, target: Target, logs_dir: Path
) -> None:
    """`dispatcher run` on a cluster URL delivers; after one is SIGKILLed mid-delivery, another
    reclaims its job and delivers it."""
    env = daemon_env(cluster.url, prefix, delivery_timeout_s="4", delivery_stall_timeout_s="5")
    await cclient.create_webhook("acme", target.url("/fast"))
    slow = await cclient.create_webhook("slow", target.url("/slow"))
    target.script("/slow", Reply(200, delay_s=60), Reply(200))
    first = Daemon(
        {**env, "DISPATCHER_DELIVERY_TIMEOUT_S": "60", "DISPATCHER_DELIVERY_STALL_TIMEOUT_S": "61"},
        logs_dir / "first.log",
    ).start()
    second: Daemon | None = None
    try:
        ids = [(await cclient.publish("acme", "a.b", {"i": i}))["jobs"][0]["id"] for i in range(20)]
        await target.wait_for(20, "/fast", timeout_s=30)
        for job_id in ids:
            await eventually(lambda job_id=job_id: _state(cclient, job_id, "delivered"))
        [connected] = log_events(first, "redis.connected")
        assert connected["mode"] == "cluster"
        assert len(connected["nodes"]) == 3
        stuck = (await cclient.publish("slow", "a.b", {}))["jobs"][0]["id"]
        await target.wait_for(1, "/slow", timeout_s=10)
        first.kill()  # SIGKILL while the slow request is in flight
        assert await _state(cclient, stuck, "active")
        second = Daemon(env, logs_dir / "second.log").start()
        job = await eventually(
            lambda: _state(cclient, stuck, "delivered"), timeout_s=40, what="reclaimed"
        )
        assert job["webhook_id"] == slow["id"]
        assert target.count("/slow") == 2
        workers = (await cclient.status())["workers"]
        assert any(w["pid"] == second.process.pid for w in workers if second.process)
    finally:
        await stop_daemons(first, second)


@pytest.mark.slow
async def test_daemon_refuses_a_cluster_with_an_evicting_primary(
    cluster: ClusterServers, prefix: str, raw: RedisCluster, logs_dir: Path
) -> None:
    """maxmemory-policy is checked on every primary, not only the one holding the keys."""
    home = raw.get_node_from_key(f"{prefix}:{{0}}:jobs")
    assert home is not None
    other = next(p for p in cluster.ports if p != home.port)
    redis_cli(other, "config", "set", "maxmemory-policy", "allkeys-lru")
    try:
        daemon = Daemon(daemon_env(cluster.url, prefix), logs_dir / "refused.log").start()
        assert await asyncio.to_thread(daemon.wait, 30) == 2
        [problem] = log_events(daemon, "daemon.start_failed")
        assert f"allkeys-lru on 127.0.0.1:{other}" in problem["problem"]
    finally:
        redis_cli(other, "config", "set", "maxmemory-policy", "noeviction")


async def test_sigterm_is_clean_on_a_cluster(
    cluster: ClusterServers, cclient: Client, prefix: str, target: Target, logs_dir: Path
) -> None:
    """A daemon on a cluster URL delivers and exits 0 on SIGTERM."""
    await cclient.create_webhook("acme", target.url())
    daemon = Daemon(daemon_env(cluster.url, prefix), logs_dir / "term.log").start()
    try:
        job_id = (await cclient.publish("acme", "a.b", {}))["jobs"][0]["id"]
        await eventually(lambda: _state(cclient, job_id, "delivered"), timeout_s=20)
        daemon.signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 30) == 0
    finally:
        daemon.stop()


async def test_delivery_stats_are_counted_rolled_and_read_in_each_shard(
    cclient: Client, cworkers: WorkerHarness, target: Target
) -> None:
    """With 3 shards on the cluster each webhook's attempts are counted in its own shard, rolled
    into their hour there, and read back by its stats."""
    await cclient.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(cclient, target, 3, per_shard=1)
    await cclient.publish("acme", "a.b", {})
    await cworkers.start()
    await target.wait_for(len(hooks), timeout_s=15)

    async def counted(webhook_id: str, window: str) -> bool:
        return (await cclient.webhook_stats(webhook_id, window))["delivered"] == 1

    for hook in hooks:
        await eventually(lambda h=hook["id"]: counted(h, "1h"), what="the attempt counted")
    later_ms = cclient.store.clock.now_ms() + 3 * 60_000
    assert await stats.rollup(cclient.store, later_ms) == len(hooks)
    for hook in hooks:
        assert await counted(hook["id"], "7d")


async def test_delivered_jobs_are_retried_in_each_shard(
    cclient: Client, cworkers: WorkerHarness, target: Target, raw: RedisCluster
) -> None:
    """With 3 shards on the cluster a delivered job of each shard keeps its payload key in its
    shard's slot, shows until when it can be retried, and its retry sends it again."""
    await cclient.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(cclient, target, 3, per_shard=1)
    jobs = (await cclient.publish("acme", "a.b", {"n": 1}))["jobs"]
    await cworkers.start()
    for job in jobs:
        shown = await eventually(lambda j=job["id"]: _state(cclient, j, "delivered"))
        assert shown["retry_until"] is not None
        shard = cclient.store.of_job(job["id"])
        assert key_slot(shard.keys.payload(job["id"]).encode()) == key_slot(
            shard.keys.jobs.encode()
        )
        assert await raw.exists(shard.keys.payload(job["id"])) == 1
        await cclient.retry_job(job["id"])
    await target.wait_for(2 * len(hooks), timeout_s=15)
    for job in jobs:
        again = await eventually(lambda j=job["id"]: _state(cclient, j, "delivered"))
        assert len(again["attempts"]) == 2


async def _fifo_hook_in(client: Client, url: str, shard: int) -> shapes.WebhookWithSecret:
    """A FIFO webhook of tenant ``acme`` in ``shard`` (the others created on the way are
    deleted again: placement hashes the new id)."""
    while True:
        hook = await client.create_webhook("acme", url, ordering="fifo")
        if shard_of(hook["id"]) == shard:
            return hook
        await client.delete_webhook(hook["id"])


def _ids_by_webhook(answers: list[shapes.PublishAnswer | DispatcherError]) -> dict[str, list[str]]:
    """Each webhook's job ids in the order of the answers."""
    ids: dict[str, list[str]] = {}
    for answer in answers:
        assert not isinstance(answer, Exception)
        for job in answer["jobs"]:
            ids.setdefault(job["webhook_id"], []).append(job["id"])
    return ids


async def test_fifo_lanes_in_every_shard_keep_their_order(
    cclient: Client, cworkers: WorkerHarness, raw: RedisCluster, prefix: str
) -> None:
    """With 3 shards on 3 primaries, a FIFO webhook in each and one ``publish_many`` of the
    events of three lanes (the first with an idempotency key, so its other shards' parts run
    second): each lane's jobs are delivered in publish order, one at a time, and a failing
    head holds back its own lane alone until it is delivered."""
    await cclient.store.adopt_layout(3)
    async with LaneTarget() as t0, LaneTarget() as t1, LaneTarget() as t2:
        targets = [t0, t1, t2]
        hooks = [await _fifo_hook_in(cclient, t.url, k) for k, t in enumerate(targets)]
        for target in targets:
            target.failing.add("k0")
        events: list[dict[str, object]] = [
            {
                "tenant_id": "acme",
                "event_type": "a.b",
                "payload": {"seq": n, "key": f"k{n % 3}"},
                "ordering_key": f"k{n % 3}",
            }
            for n in range(18)
        ]
        events[0]["idempotency_key"] = "first"
        ids = _ids_by_webhook(await cclient.publish_many(events))
        for k, hook in enumerate(hooks):
            lane = Keys(prefix, k).lane(hook["id"], "k1")
            assert raw.get_node_from_key(lane) == raw.get_node_from_key(Keys(prefix, k).jobs)
            queued = await raw.lrange(lane, 0, -1)
            assert [i.decode() for i in queued] == ids[hook["id"]][1::3]  # type: ignore[union-attr]
        await cworkers.start(max_attempts=100, backoff_base_s=0.05, backoff_cap_s=0.2)
        for target in targets:
            await eventually(lambda t=target: len(t.delivered_order("k2")) == 6)
            await eventually(lambda t=target: len(t.delivered_order("k1")) == 6)
            assert {seq for seq, _ in target.arrivals["k0"]} == {0}
        behind = await cclient.get_job(ids[hooks[1]["id"]][3])
        assert behind is not None
        assert (behind["state"], behind["waiting_for"]) == ("queued", "ordering")
        for target in targets:
            target.failing.clear()
        for hook in hooks:
            for job_id in ids[hook["id"]]:
                await eventually(lambda j=job_id: _state(cclient, j, "delivered"))
    for target in targets:
        for key in ("k0", "k1", "k2"):
            assert target.delivered_order(key) == list(range(int(key[1]), 18, 3))
            assert target.peak[key] == 1


async def test_a_dead_fifo_head_releases_its_lane_and_a_replay_joins_the_back(
    cclient: Client, cworkers: WorkerHarness
) -> None:
    """On a cluster, in a shard other than shard 0: dead heads let the next job go, and
    replayed dead jobs join the back of their lane in the order given."""
    await cclient.store.adopt_layout(3)
    async with LaneTarget() as target:
        await _fifo_hook_in(cclient, target.url, 2)
        target.failing.add("k")
        ids = []
        for seq in range(3):
            payload = {"seq": seq, "key": "k"}
            answer = await cclient.publish("acme", "a.b", payload, ordering_key="k")
            ids.append(answer["jobs"][0]["id"])
        await cworkers.start(max_attempts=1)
        for job_id in ids:
            await eventually(lambda j=job_id: _state(cclient, j, "dead"))
        assert [seq for seq, _ in target.arrivals["k"]] == [0, 1, 2]
        await cworkers.stop()
        target.failing.clear()
        assert (await cclient.replay([ids[2], ids[0]]))["replayed"] == 2
        behind = await cclient.get_job(ids[0])
        assert behind is not None
        assert (behind["state"], behind["waiting_for"]) == ("queued", "ordering")
        await cworkers.start(max_attempts=1)
        for job_id in (ids[2], ids[0]):
            await eventually(lambda j=job_id: _state(cclient, j, "delivered"))
    assert target.delivered_order("k") == [2, 0]
    assert target.peak["k"] == 1


async def test_paused_webhooks_of_each_shard_drain_in_order_when_resumed(
    cclient: Client, cworkers: WorkerHarness, target: Target
) -> None:
    """With 3 shards on the cluster, paused webhooks of every shard hold their jobs, and once
    resumed each receives its jobs once, in accepted order, and stops draining."""
    await cclient.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(cclient, target, 3, per_shard=1)
    for i, hook in enumerate(hooks):
        await cclient.update_webhook(hook["id"], url=target.url(f"/h{i}"), paused=True)
    await cworkers.start(concurrency=1)
    for n in range(20):
        await cclient.publish("acme", "a.b", {"n": n})

    async def held() -> bool:
        return (await pauses.held(cclient.store)).jobs == 20 * len(hooks)

    # One slot over 3 shards claims a few jobs a second (a blocking read per shard in turn).
    await eventually(held, timeout_s=60, what="every job held")
    for hook in hooks:
        await cclient.update_webhook(hook["id"], paused=False)
    await target.wait_for(20 * len(hooks), timeout_s=60)
    for i in range(len(hooks)):
        got = [orjson.loads(r.body)["n"] for r in target.received if r.path == f"/h{i}"]
        assert got == list(range(20))

    async def drained() -> bool:
        for hook in hooks:
            shard = cclient.store.of_webhook(hook["id"])
            raw = await shard.redis.hget(shard.keys.webhooks, hook["id"])
            if raw is None or b'"draining"' in raw:
                return False
        return (await pauses.held(cclient.store)).jobs == 0

    await eventually(drained, what="every drain mark dropped")
