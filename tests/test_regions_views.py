"""Views and operations span regions (issue 22): a job id's look-ups and changes run in the
region it names, a webhook's views in its region, and deployment-wide operations in every
region, from either region's Client or admin API; a region that does not answer is a 503 naming
it. Two real redis-servers (regions a and b), started once for the module."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher import Client, InvalidField, NotReplayable, daemon
from dispatcher.alerts import Alerts
from dispatcher.config import AdminConfig, Config, RedisConfig
from dispatcher.ids import with_region
from dispatcher.metrics import Metrics
from dispatcher.operations import Runner, begin
from dispatcher.queue import breakers, control, dlq_ops, operations
from dispatcher.queue.keys import Keys
from dispatcher.queue.regions import Regions
from tests.admin_api import TOKEN, start_api
from tests.helpers import RedisServer, eventually, free_port, seed_dead_jobs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from dispatcher import shapes

pytestmark = pytest.mark.xdist_group("regions")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RedisServer]]:
    found = {name: RedisServer(tmp_path_factory.mktemp(f"region_{name}")) for name in "ab"}
    for server in found.values():
        server.start()
    yield found
    for server in found.values():
        server.stop()


@dataclass
class World:
    """A Client in each region (the same prefix), each region's Redis, and a webhook of
    each region registered in both (as the registry replicator leaves it)."""

    a: Client
    b: Client
    redis: dict[str, aioredis.Redis]
    prefix: str
    hooks: dict[str, shapes.WebhookWithSecret]

    async def dead(self, region: str, n: int, ago_ms: int | None = None) -> list[str]:
        """``n`` dead jobs of ``region``'s webhook, in its Redis, their ids naming it (dead
        ``ago_ms`` ago; None: now)."""
        client = self.a if region == "a" else self.b
        entry_ids = None
        if ago_ms is not None:
            then = client.store.clock.now_ms() - ago_ms
            entry_ids = [f"{then}-{i}" for i in range(n)]
        return await seed_dead_jobs(
            client,
            self.redis[region],
            self.prefix,
            n,
            hook=self.hooks[region],
            region=region,
            entry_ids=entry_ids,
        )

    async def dlq_len(self, region: str) -> int:
        return int(await self.redis[region].xlen(Keys(self.prefix).dlq))


@pytest.fixture
async def world(servers: dict[str, RedisServer], prefix: str) -> AsyncIterator[World]:
    urls = {name: server.url for name, server in servers.items()}
    conns = {name: aioredis.Redis.from_url(url) for name, url in urls.items()}
    async with (
        Client.from_url(urls["a"], prefix, region="a", regions=urls) as a,
        Client.from_url(urls["b"], prefix, region="b", regions=urls) as b,
    ):
        for name, client in (("a", a), ("b", b)):
            await client.store.adopt_region(name, tuple(urls))
        hooks = {}
        webhooks = Keys(prefix).webhooks
        for name in urls:
            hook = await a.create_webhook("acme", "https://hooks.example.com/x", region=name)
            raw = await conns["a"].hget(webhooks, hook["id"])
            await conns["b"].hset(webhooks, hook["id"], raw)  # the registry's copy in b
            hooks[name] = hook
        yield World(a, b, conns, prefix, hooks)
    for conn in conns.values():
        await conn.aclose()


async def test_a_job_is_looked_up_in_the_region_its_id_names(world: World) -> None:
    """A job held in b is shown, inspected and listed among its webhook's jobs from a."""
    (job_id,) = await world.dead("b", 1)
    job = await world.a.get_job(job_id)
    assert job is not None
    assert (job["id"], job["state"]) == (job_id, "dead")
    assert await world.a.get_job(with_region(job_id, "a")) is None  # not a's: a holds nothing
    inspected = await world.a.inspect_dlq(job_id)
    assert (inspected["id"], orjson.dumps(inspected["payload"])) == (job_id, b'{"n":1}')
    recent = await world.a.webhook_jobs(world.hooks["b"]["id"])
    assert [item["id"] for item in recent["items"]] == [job_id]


async def test_retry_and_replay_by_ids_run_in_each_jobs_region(world: World) -> None:
    """From a, a retry of b's dead job and a replay of a mix of a's and b's jobs requeue each
    in its own region; ids not found are named."""
    in_a, in_b = await world.dead("a", 2), await world.dead("b", 2)
    retried = await world.a.retry_job(in_b[0])
    assert (retried["id"], retried["state"]) == (in_b[0], "queued")
    unknown = with_region(in_b[0].replace(".0~", ".7~"), "b")
    answer = await world.a.replay([*in_a, in_b[1], unknown])
    assert answer == {"replayed": 3, "not_found": [unknown], "not_dead": []}
    for client, ids in ((world.a, in_a), (world.b, in_b)):
        for job_id in ids:
            job = await client.get_job(job_id)
            assert job is not None
            assert job["state"] == "queued"
    assert (await world.dlq_len("a"), await world.dlq_len("b")) == (0, 0)


async def test_a_replay_across_regions_is_all_or_nothing(world: World) -> None:
    """A dead job of b that cannot go back (its webhook is disabled there) refuses the whole
    replay, so a's job in it stays dead too."""
    (in_a,), (in_b,) = await world.dead("a", 1), await world.dead("b", 1)
    await world.b.update_webhook(world.hooks["b"]["id"], enabled=False)
    with pytest.raises(NotReplayable) as refused:
        await world.a.replay([in_a, in_b])
    assert [r["id"] for r in refused.value.refused] == [in_b]
    job = await world.a.get_job(in_a)
    assert job is not None
    assert job["state"] == "dead"


async def test_the_dlq_listing_walks_every_region_home_first(world: World) -> None:
    """Pages of 2 list a's dead jobs then b's from a (b's then a's from b), their cursors
    naming the region; a webhook's listing reads its region only; a cursor without a region
    goes on in the home region."""
    in_a, in_b = await world.dead("a", 3), await world.dead("b", 3)
    for client, expected, regions in (
        (world.a, in_a + in_b, ["a", "b", "b"]),
        (world.b, in_b + in_a, ["b", "a", "a"]),
    ):
        seen: list[str | None] = []
        cursors: list[str] = []
        cursor = None
        while True:
            page = await client.list_dlq(limit=2, cursor=cursor)
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            cursors.append(cursor)
        assert seen == expected
        assert [c.partition("|")[0] for c in cursors] == regions
    first = await world.a.list_dlq(limit=1)
    assert first["next_cursor"] is not None
    region, _, inner = first["next_cursor"].partition("|")
    assert region == "a"
    assert await world.a.list_dlq(limit=2, cursor=inner) == await world.a.list_dlq(
        limit=2, cursor=first["next_cursor"]
    )
    only_b = await world.a.list_dlq(webhook_id=world.hooks["b"]["id"])
    assert ([item["id"] for item in only_b["items"]], only_b["next_cursor"]) == (in_b, None)
    _app, api = await start_api(world.a)
    try:
        second = await api.call("GET", "/v1/dlq", params={"limit": "2", "cursor": "b|"})
        assert second.body == await world.a.list_dlq(limit=2, cursor="b|")
        assert [item["id"] for item in second.body["items"]] == in_b[:2]
    finally:
        await api.close()


async def test_deployment_wide_operations_reach_every_region(world: World) -> None:
    """From a: a purge, replay of everything matching and a queue pause act on b too, and a
    replay matching b's webhook acts on b only."""
    await world.dead("a", 1, ago_ms=10_000)
    await world.dead("b", 2, ago_ms=10_000)
    world.a.dlq_retention_s = 5
    facts = await world.a.purge_facts()
    assert (facts.would_purge, facts.within_retention) == (3, 0)
    assert (await world.a.purge_dlq(confirm=True))["purged"] == 3
    assert (await world.dlq_len("a"), await world.dlq_len("b")) == (0, 0)

    await world.dead("a", 2)
    await world.dead("b", 2)
    only_b = await world.a.replay_matching(webhook_id=world.hooks["b"]["id"])
    assert only_b["replayed"] == 2
    assert (await world.dlq_len("a"), await world.dlq_len("b")) == (2, 0)
    await world.dead("b", 2)
    assert (await world.a.replay_matching())["replayed"] == 4
    assert (await world.dlq_len("a"), await world.dlq_len("b")) == (0, 0)

    await world.a.pause("default")
    assert "default" in await control.paused_queues(world.b.store)
    await world.a.resume("default")
    assert "default" not in await control.paused_queues(world.b.store)


async def test_a_background_replay_walks_the_regions_as_shards(world: World) -> None:
    """An operation left after an inline page of one job goes on into b, and a runner that
    takes it up replays the rest there."""
    await world.dead("a", 2)
    await world.dead("b", 2)
    client = world.a
    plan = await dlq_ops.plan_replay(
        client.store, regions=client.regions, scope=await client.dlq_scope()
    )
    assert plan.regions == ["a", "b"]
    first = await dlq_ops.replay_step(
        client.store, plan, dlq_ops.Position(), budget=1, regions=client.regions
    )
    op = await begin(client.store, "replay", plan, first)
    runner = Runner(client.store, regions=client.regions)
    task = asyncio.create_task(runner.run())
    runner.hand(op.id)

    async def finished() -> operations.Operation | None:
        found = await operations.get(client.store, op.id)
        return found if found and found.state == operations.SUCCEEDED else None

    try:
        done = await eventually(finished, what="the operation to finish")
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    assert (done.changed, done.total) == (4, 4)
    assert (await world.dlq_len("a"), await world.dlq_len("b")) == (0, 0)


async def test_a_region_that_does_not_answer_is_a_503_naming_it(
    world: World, servers: dict[str, RedisServer]
) -> None:
    """With b's Redis stopped, the admin API in a answers 503 ``region_unavailable`` naming b
    for b's job, b's webhook's stats and a queue pause (which reaches every region), and names
    a region it has no URL for; a's own jobs still answer."""
    (in_a,), (in_b,) = await world.dead("a", 1), await world.dead("b", 1)
    _app, api = await start_api(world.a)
    servers["b"].stop()
    try:
        for method, path in (
            ("GET", f"/v1/jobs/{in_b}"),
            ("GET", f"/v1/dlq/{in_b}"),
            ("GET", f"/v1/webhooks/{world.hooks['b']['id']}/stats"),
            ("POST", "/v1/queues/default/pause"),
            ("GET", f"/v1/jobs/{with_region(in_b, 'zz')}"),
        ):
            answer = await api.call(method, path)
            region = "zz" if "~zz" in path else "b"
            assert answer.status == 503, (path, answer.body)
            assert answer.body["error"]["code"] == "region_unavailable"
            assert f"region {region!r}" in answer.body["error"]["message"]
        mine = await api.call("GET", f"/v1/jobs/{in_a}")
        assert (mine.status, mine.body["state"]) == (200, "dead")
    finally:
        await api.close()
        servers["b"].start()


async def test_a_webhook_shows_the_breaker_of_its_own_region(
    world: World, servers: dict[str, RedisServer]
) -> None:
    """b's webhook, whose breaker is open in b (where it is delivered), shows it open from a,
    alone and in a listing; with b's Redis stopped it is still shown, without the breaker."""
    hook = world.hooks["b"]["id"]
    for _ in range(10):
        failed = {hook: breakers.Health(failed=1, last_error="HTTP 500")}
        await breakers.report(world.b.store, failed, open_s=30)
    seen_in_b = await world.b.get_webhook(hook)
    assert seen_in_b["breaker"] is not None
    assert seen_in_b["breaker"]["state"] == "open"
    shown = await world.a.get_webhook(hook)
    assert (shown["breaker"], shown["failing_since"]) == (
        seen_in_b["breaker"],
        seen_in_b["failing_since"],
    )
    listed = {h["id"]: h for h in (await world.a.list_webhooks("acme"))["items"]}
    assert listed[hook]["breaker"] == seen_in_b["breaker"]
    assert listed[world.hooks["a"]["id"]]["breaker"] is None
    servers["b"].stop()
    try:
        shown = await world.a.get_webhook(hook)
        assert (shown["id"], shown["region"], shown["breaker"]) == (hook, "b", None)
    finally:
        servers["b"].start()


async def test_a_client_given_another_regions_redis_refuses_to_act(
    world: World, servers: dict[str, RedisServer]
) -> None:
    """A Client told it is region b but opened on a's Redis (the daemon exits 2 for this) raises
    ``InvalidField`` naming ``region`` on look-ups and operations, changing nothing; malformed
    ``region`` or ``regions`` are refused when it is made."""
    urls = {name: server.url for name, server in servers.items()}
    (in_b,) = await world.dead("b", 1)
    async with Client.from_url(urls["a"], world.prefix, region="b", regions=urls) as wrong:
        for call in (
            lambda: wrong.get_job(in_b),
            lambda: wrong.pause("default"),
            wrong.list_dlq,
            lambda: wrong.replay([in_b]),
            wrong.status,
        ):
            with pytest.raises(InvalidField) as refused:
                await call()
            assert refused.value.field == "region"
            assert "region 'a'" in refused.value.message
    assert "default" not in await control.paused_queues(world.a.store)
    assert await world.dlq_len("b") == 1
    for region, regions, field in (
        ("B", urls, "region"),
        ("c", urls, "region"),
        ("a", {"a": urls["a"], "Not a name": urls["b"]}, "regions"),
        ("a", {"a": None}, "regions"),
        ("a", {"a": "http://redis.example.com"}, "regions"),
    ):
        with pytest.raises(InvalidField) as refused:
            Client.from_url(urls["a"], world.prefix, region=region, regions=regions)  # type: ignore[arg-type]
        assert refused.value.field == field


async def test_the_daemons_admin_api_closes_its_pools_of_other_regions(
    world: World, servers: dict[str, RedisServer]
) -> None:
    """The admin API of a daemon of region a, having looked a job up in b, leaves no
    connection to b's Redis open once the daemon has stopped it."""
    urls = {name: server.url for name, server in servers.items()}
    (in_b,) = await world.dead("b", 1)
    cfg = Config(
        redis=RedisConfig(url=urls["a"], prefix=world.prefix),
        admin=AdminConfig(listen=f"127.0.0.1:{free_port()}", token=TOKEN),
        region="a",
        regions=urls,
    )
    before = len(await world.redis["b"].client_list())
    async with AsyncExitStack() as stack:
        await daemon._start_admin(cfg, urls["a"], Metrics(), Alerts(cfg.alerts), stack)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://{cfg.admin.listen}/v1/jobs/{in_b}",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as answer,
        ):
            assert (answer.status, (await answer.json())["state"]) == (200, "dead")
        assert len(await world.redis["b"].client_list()) > before
    assert len(await world.redis["b"].client_list()) == before


async def test_an_operation_waiting_for_a_region_lets_the_others_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a background purge waits for b's Redis to answer, a replay of a's webhook handed
    to the same runner after it still finishes; the purge finishes once b is back."""
    monkeypatch.setattr("dispatcher.operations.RETRY_S", 0.05)
    client = world.a
    await world.dead("b", 3, ago_ms=10_000)
    facts = await dlq_ops.purge_facts(
        client.store,
        older_than_s=5,
        retention_s=5,
        regions=client.regions,
        scope=await client.dlq_scope(),
    )
    first = await dlq_ops.purge_step(
        client.store, facts.plan, dlq_ops.Position(), budget=1, regions=client.regions
    )
    purge = await begin(client.store, "purge", facts.plan, first)
    await world.dead("a", 2)
    hook_a = world.hooks["a"]["id"]
    plan = await dlq_ops.plan_replay(
        client.store,
        webhook_id=hook_a,
        regions=client.regions,
        scope=await client.dlq_scope(hook_a),
    )
    first = await dlq_ops.replay_step(
        client.store, plan, dlq_ops.Position(), budget=1, regions=client.regions
    )
    replay = await begin(client.store, "replay", plan, first)
    # b's Redis not answering: the runner's regions name a port nobody listens on for it
    cut_off = Regions(
        client.store, "a", {**client.regions.urls, "b": f"redis://127.0.0.1:{free_port()}"}
    )
    runner = Runner(client.store, regions=cut_off)
    task = asyncio.create_task(runner.run())

    async def finished(op_id: str) -> operations.Operation | None:
        found = await operations.get(client.store, op_id)
        return found if found and found.state == operations.SUCCEEDED else None

    try:
        runner.hand(purge.id)
        runner.hand(replay.id)
        done = await eventually(lambda: finished(replay.id), what="a's replay to finish")
        assert done.changed == 2
        runner.regions = client.regions  # b answers again
        done = await eventually(lambda: finished(purge.id), what="the purge to finish")
        assert done.changed == 3
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await cut_off.close()
    assert (await world.dlq_len("a"), await world.dlq_len("b")) == (0, 0)


async def test_the_status_shows_every_region_with_its_outboxes(
    world: World, servers: dict[str, RedisServer]
) -> None:
    """``GET /v1/status`` in a shows a and b: each region's own counts (a's equal to the top
    level's), a's outbox for b with its depth and lag, and b as unreachable once its Redis
    is stopped, while a's counts still answer."""
    await world.dead("b", 2)
    await world.a.publish("acme", "order.created", {"n": 1})  # a's job here, b's to the outbox
    _app, api = await start_api(world.a)
    try:
        answer = await api.call("GET", "/v1/status")
        assert answer.status == 200
        status = answer.body
        assert status["region"] == "a"
        assert list(status["regions"]) == ["a", "b"]
        mine, theirs = status["regions"]["a"], status["regions"]["b"]
        assert mine["reachable"]
        assert theirs["reachable"]
        for count in ("queued", "active", "scheduled", "dlq_size", "paused"):
            assert mine[count] == status[count], count
        assert mine["queued"] == 1
        assert mine["outbox"]["b"]["depth"] == 1
        assert mine["outbox"]["b"]["lag_ms"] is not None
        assert theirs["dlq_size"] == 2
        servers["b"].stop()
        cut = (await api.call("GET", "/v1/status")).body
        assert cut["regions"]["b"]["reachable"] is False
        assert cut["regions"]["b"]["error"]
        assert cut["regions"]["a"]["outbox"]["b"]["depth"] == 1
    finally:
        await api.close()
        servers["b"].start()
