"""Issue 15's answers under pressure: concurrent and batched reuses of a key, queues only one
shard names, replays and purges at their bounds and in every shard, a churning /metrics pool,
and the same on a Redis Cluster (a reviewer's probes, kept as regression tests)."""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from dispatcher import Client as _Client
from dispatcher import DispatcherError, IdempotencyKeyReused, UnknownQueue, shapes
from dispatcher.metrics import ENDPOINT_SERIES_MAX, Metrics
from dispatcher.queue import dlq
from dispatcher.queue.keys import shard_of
from dispatcher.traffic import IDLE_FORGET_S, Pool
from tests.admin_api import start_api
from tests.helpers import eventually, hash_len, hooks_in_every_shard
from tests.target import Reply
from tests.test_client_parity import dead_jobs

if TYPE_CHECKING:

    import redis.asyncio as aioredis

    from dispatcher import Client
    from tests.target import Target


async def _jobs(client: Client) -> int:
    total = 0
    for shard in await client.store.all_shards():
        total += await hash_len(shard.redis, shard.keys.jobs)
    return total


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_publishes_of_one_key_enqueue_one_event(
    client: Client, target: Target, shards: int, seed: int
) -> None:
    """Many publishes of one key at once, with two payloads: one event is enqueued, the
    requests like the winner answer its answer, the others 422."""
    rng = random.Random(seed)
    await client.store.adopt_layout(shards)
    await hooks_in_every_shard(client, target, shards, per_shard=1)
    payloads = [{"p": rng.choice("AB")} for _ in range(16)]

    async def one(payload: dict[str, str]) -> shapes.PublishAnswer | DispatcherError:
        await asyncio.sleep(rng.random() / 1000)
        try:
            return await client.publish("acme", "e", payload, idempotency_key="k")
        except DispatcherError as exc:
            return exc

    results = await asyncio.gather(*(one(p) for p in payloads))
    won = [(p, r) for p, r in zip(payloads, results, strict=True) if isinstance(r, dict)]
    lost = [(p, r) for p, r in zip(payloads, results, strict=True) if not isinstance(r, dict)]
    assert won
    assert all(isinstance(r, IdempotencyKeyReused) for _, r in lost)
    assert len({orjson_key(p) for p, _ in won}) == 1
    assert {p["p"] for p, _ in lost}.isdisjoint({won[0][0]["p"]})
    assert all(r == won[0][1] for _, r in won)
    assert await _jobs(client) == won[0][1]["matched"]


def orjson_key(payload: dict[str, str]) -> str:
    return payload["p"]


@pytest.mark.parametrize("shards", [1, 3])
async def test_publish_many_with_repeats_and_reuses_in_one_batch(
    client: Client, target: Target, shards: int
) -> None:
    """In one batch, a key's first event is enqueued, its repeat answers the same answer and
    its reuse with another payload is refused; nothing else is enqueued."""
    await client.store.adopt_layout(shards)
    await hooks_in_every_shard(client, target, shards, per_shard=1)

    def ev(key: str, n: int) -> dict[str, Any]:
        return {"tenant_id": "acme", "event_type": "e", "payload": {"n": n}, "idempotency_key": key}

    answers = await client.publish_many(
        [ev("a", 1), ev("a", 2), ev("a", 1), ev("b", 1), ev("b", 1), ev("b", 3)]
    )
    a1, a2, a3, b1, b2, b3 = answers
    assert isinstance(a1, dict)
    assert isinstance(b1, dict)
    assert isinstance(a2, IdempotencyKeyReused)
    assert isinstance(b3, IdempotencyKeyReused)
    assert (a3, b2) == (a1, b1)
    assert await _jobs(client) == a1["matched"] + b1["matched"]


async def test_equal_instants_in_other_offsets_are_the_same_request(
    client: Client, target: Target
) -> None:
    """deliver_at in another offset, or as an aware datetime, is the same moment: a repeat."""

    await client.create_webhook("acme", target.url(), ["e"])
    first = await client.publish(
        "acme", "e", {"x": 1.5}, idempotency_key="k", deliver_at="2999-01-01T00:00:00Z"
    )
    for when in (
        "2999-01-01T01:00:00+01:00",
        "2998-12-31T19:00:00-05:00",
        datetime(2999, 1, 1, tzinfo=UTC),
        datetime(2999, 1, 1, 9, tzinfo=timezone(timedelta(hours=9))),
    ):
        again = await client.publish("acme", "e", {"x": 1.5}, idempotency_key="k", deliver_at=when)
        assert again == first
    _app, api = await start_api(client)
    try:
        http = await api.call(
            "POST",
            "/v1/events",
            json={
                "tenant_id": "acme",
                "event_type": "e",
                "payload": {"x": 1.5},
                "idempotency_key": "k",
                "deliver_at": "2999-01-01T02:00:00+02:00",
            },
        )
        assert (http.status, http.body) == (200, first)
        other = await api.call(
            "POST",
            "/v1/events",
            json={
                "tenant_id": "acme",
                "event_type": "e",
                "payload": {"x": 1.5},
                "idempotency_key": "k",
            },
        )
        assert (other.status, other.body["error"]["code"]) == (422, "idempotency_key_reused")
    finally:
        await api.close()


async def test_a_queue_named_only_by_a_webhook_in_the_last_shard_is_known(
    client: Client, target: Target
) -> None:
    """A queue named by one webhook in shard 2 of 3 (and nowhere else) can be paused."""
    await client.store.adopt_layout(3)
    for n in range(200):
        queue = f"q-{n}_{'x' * 50}"
        hook = await client.create_webhook("acme", target.url(), ["e"], queue=queue)
        if shard_of(hook["id"]) == 2:
            break
    else:
        pytest.fail("no webhook landed in shard 2")
    assert await client.pause(queue) == {"queue": queue, "paused": True}
    await client.delete_webhook(hook["id"])
    assert await client.resume(queue) == {"queue": queue, "paused": False}
    with pytest.raises(UnknownQueue):
        await client.pause("q-typo")


async def test_a_paused_queue_whose_webhooks_were_deleted_can_be_resumed(
    client: Client, target: Target, redis: aioredis.Redis
) -> None:
    """Deleting every webhook of a paused queue (and forgetting the queues set) still lets
    it be resumed over HTTP."""
    hook = await client.create_webhook("acme", target.url(), ["e"], queue="gone")
    await client.pause("gone")
    await client.delete_webhook(hook["id"])
    await redis.delete(client.store.keys.queues)
    _app, api = await start_api(client)
    try:
        answer = await api.call("POST", "/v1/queues/gone/resume")
        assert (answer.status, answer.body) == (200, {"queue": "gone", "paused": False})
        answer = await api.call("POST", "/v1/queues/gone/pause")
        assert answer.status == 404
    finally:
        await api.close()


async def test_replay_by_ids_with_duplicates_garbage_and_a_thousand_ids(
    client: Client, redis: aioredis.Redis
) -> None:
    """Duplicates count once, malformed and unknown ids are named once each in order, and
    1000 ids (the most one call takes) replay every dead one."""
    dead = await dead_jobs(client, redis, ["*"] * 5)
    unknown = [f"job_{uuid.uuid4().hex[:20]}.{i}" for i in range(1000 - 2 * (5 + 6))]
    garbage = ["", " ", "job_", "wh_x", "job_" + "a" * 20 + ".0.1.2", "x" * 300]
    ids = [*dead, *garbage, *unknown, *dead, *garbage]
    answer = await client.replay(ids)
    assert answer["replayed"] == len(dead)
    assert answer["not_found"] == [*garbage, *unknown]
    assert answer["not_dead"] == []
    assert (await client.replay(dead))["not_dead"] == dead


class _Fixed:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms
        self.synced = True
        self.stale = False

    def now_ms(self) -> int:
        return self.now

    async def refresh(self, _redis: object) -> None:
        return None


async def test_a_purge_deletes_exactly_what_it_counted_at_the_cutoff(
    client: Client, redis: aioredis.Redis
) -> None:
    """Entries dead-lettered exactly at the cutoff, one ms before and after: the count of the
    409, the purge and within_retention agree."""
    now = int(time.time() * 1000)
    client.store.clock = _Fixed(now)  # type: ignore[assignment]
    client.dlq_retention_s = 10.0
    cut = now - 10_000
    await dead_jobs(client, redis, [f"{cut - 1}-0", f"{cut}-0", f"{cut}-1", f"{cut + 1}-0"])
    for older in (0.0, 10.0, 9.999, 10.0005):
        facts = await client.purge_facts(older)
        assert facts.would_purge + facts.within_retention == 4, older
    with pytest.raises(DispatcherError) as caught:
        await client.purge_dlq()
    counted = caught.value.details()["would_purge"]
    assert isinstance(counted, int)
    answer = await client.purge_dlq(confirm=True)
    assert answer["purged"] == counted
    assert answer["within_retention"] == 4 - counted
    assert await dlq.dlq_size(client.store) == 4 - counted


async def test_replay_and_purge_of_dead_jobs_in_every_shard(
    client: Client, target: Target, workers: Any
) -> None:
    """Dead jobs of three shards: a replay by ids (dups, unknown, queued ids mixed in) replays
    each once and names the rest; the purge counts and deletes them across shards."""

    await client.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(client, target, 3, per_shard=1)
    target.script("/hook", Reply(500))
    await workers.start(max_attempts=1, shards=3, queues=("default",))
    answer = await client.publish("acme", "e", {"n": 1})
    ids = [job["id"] for job in answer["jobs"]]
    assert {shard_of(i) for i in ids} == {0, 1, 2}

    async def all_dead() -> bool:
        return await dlq.dlq_size(client.store) == len(hooks)

    await eventually(all_dead, what="every job dead")
    await workers.stop()
    client.dlq_retention_s = 0.0
    facts = await client.purge_facts(0)
    assert (facts.would_purge, facts.within_retention) == (len(ids), 0)
    unknown = [f"job_{'0' * 20}.{k}.7" for k in (1, 2, 5)]
    replayed = await client.replay([*reversed(ids), *unknown, ids[0], *unknown])
    assert replayed == {"replayed": len(ids), "not_found": unknown, "not_dead": []}
    again = await client.replay(ids)
    assert again == {"replayed": 0, "not_found": [], "not_dead": ids}
    assert await client.purge_dlq(confirm=True) == {
        "purged": 0,
        "retention_s": 0,
        "within_retention": 0,
    }


@pytest.mark.parametrize("seed", range(5))
def test_metrics_series_follow_a_churning_pool(seed: int) -> None:
    """Random begins, failures, successes and forgetting over 3000 webhooks: the per-webhook
    series are exactly the busiest/most limited notable ones, at most 100, and the aggregate
    gauges count what the pool holds."""

    rng = random.Random(seed)
    pool = Pool(concurrency=64, timeout_s=5.0)
    metrics = Metrics()
    now = 1000.0
    inflight: list[tuple[str, str]] = []
    for step in range(30):
        for _ in range(rng.randint(0, 400)):
            wid = f"wh_{rng.randrange(3000):05d}"
            job = f"j{step}_{rng.random()}"
            pool.endpoint(wid).begin(job, now)
            inflight.append((wid, job))
        rng.shuffle(inflight)
        for _ in range(rng.randint(0, len(inflight))):
            wid, job = inflight.pop()
            ok = rng.random() < 0.5
            pool.endpoints[wid].end(job, 0.01, answered=ok, ok=ok)
        now += rng.choice([1.0, IDLE_FORGET_S + 1])
        pool.forget_idle(now)
        metrics.export_endpoints(pool)
        text = metrics.render()
        series = r'^dispatcher_endpoint_in_flight\{webhook_id="([^"]+)"\}'
        shown = set(re.findall(series, text, re.MULTILINE))
        notable = {w for w, e in pool.endpoints.items() if e.started or e.limit < pool.start}
        assert len(shown) == min(len(notable), ENDPOINT_SERIES_MAX)
        assert shown <= notable
        busy = sum(1 for e in pool.endpoints.values() if e.started)
        assert metrics.gauge("dispatcher_endpoints_busy") == busy
        assert metrics.gauge("dispatcher_endpoints_tracked") == len(pool.endpoints)
        assert metrics.gauge("dispatcher_endpoint_series_omitted") == len(notable) - len(shown)
        in_render = re.findall(r"^dispatcher_endpoint_limit\{", text, re.MULTILINE)
        assert len(in_render) == len(shown)


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("seed", [11, 12])
async def test_random_interleavings_of_every_way_keep_one_event_per_key(
    client: Client, target: Target, shards: int, seed: int
) -> None:
    """Random concurrent rounds of HTTP, Client and publish_many publishes over a few keys and
    payloads: per key, the first request decides; the same request answers its answer, any
    other 422; the jobs enqueued are exactly the winners' matched."""
    rng = random.Random(seed)
    await client.store.adopt_layout(shards)
    await hooks_in_every_shard(client, target, shards, per_shard=1)
    _app, api = await start_api(client)
    winners: dict[str, tuple[Any, dict[str, Any]]] = {}
    try:
        for _round in range(4):
            sends = [
                (rng.choice(["http", "client", "many"]), rng.choice("kl"), rng.choice([1, 2, 1.5]))
                for _ in range(10)
            ]

            async def send(way: str, key: str, n: Any) -> tuple[str, Any, Any]:
                event: dict[str, Any] = {
                    "tenant_id": "acme",
                    "event_type": "e",
                    "payload": {"n": n},
                    "idempotency_key": key,
                }
                if way == "http":
                    got = await api.call("POST", "/v1/events", json=event)
                    if got.status == 422:
                        return key, n, got.body["error"]["code"]
                    return key, n, got.body
                if way == "client":
                    try:
                        return key, n, await client.publish(**event)
                    except IdempotencyKeyReused as exc:
                        return key, n, exc.code
                [one] = await client.publish_many([event])
                return key, n, one.code if isinstance(one, DispatcherError) else one

            for key, n, result in await asyncio.gather(*(send(*s) for s in sends)):
                if isinstance(result, dict):
                    first = winners.setdefault(key, (n, result))
                    assert (n, result) == first, (key, n, result, first)
                else:
                    assert result == "idempotency_key_reused"
        # A loser never wins later, and the winners' jobs are all there is.
        assert await _jobs(client) == sum(a["matched"] for _, a in winners.values())
    finally:
        await api.close()



async def test_on_a_cluster_unknown_queues_reuses_and_dlq_answers_hold(
    cluster: Any, prefix: str, target: Target
) -> None:
    """On a Redis Cluster with three shards: a queue named only in one shard is known after
    the backfill, a typo is 404, a reused key is refused whole (batch too), and a replay by
    ids names the unknown ids."""

    async with _Client.from_url(cluster.url, prefix=prefix) as c:
        await c.store.adopt_layout(3)
        await hooks_in_every_shard(c, target, 3, per_shard=1)
        for n in range(100):
            hook = await c.create_webhook("acme", target.url(), ["e"], queue=f"cq{n}")
            if shard_of(hook["id"]) == 1:
                break
        shard = c.store.shard(1)
        # as if written before the queues set (and its count) existed
        await shard.redis.delete(shard.keys.queues, shard.keys.queues_indexed)
        assert (await c.pause(f"cq{n}"))["paused"] is True
        with pytest.raises(UnknownQueue):
            await c.pause("cq-typo")
        first = await c.publish("acme", "e", {"n": 1}, idempotency_key="k")
        with pytest.raises(IdempotencyKeyReused):
            await c.publish("acme", "e", {"n": 2}, idempotency_key="k")
        many = await c.publish_many(
            [
                {
                    "tenant_id": "acme",
                    "event_type": "e",
                    "payload": {"n": n},
                    "idempotency_key": "k",
                }
                for n in (1, 2)
            ]
        )
        assert many[0] == first
        assert isinstance(many[1], IdempotencyKeyReused)
        unknown = f"job_{'0' * 20}.2.1"
        assert await c.replay([unknown, first["jobs"][0]["id"]]) == {
            "replayed": 0,
            "not_found": [unknown],
            "not_dead": [first["jobs"][0]["id"]],
        }
