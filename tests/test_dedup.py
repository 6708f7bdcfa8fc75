"""Hash-based deduplication: an event identical to one the tenant published within the dedup
window (same event type, payload as a JSON value) is enqueued once, whatever the shard layout
and however many publishers race; the duplicate answers the first event's answer."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher import Client, InvalidField
from dispatcher.errors import RedisOutOfMemory
from dispatcher.ids import new_event_ids
from dispatcher.queue import publishing
from dispatcher.queue.keys import Keys, shard_of, stream_of
from tests.admin_api import TOKEN
from tests.helpers import (
    Daemon,
    RedisServer,
    daemon_env,
    eventually,
    free_port,
    hooks_in_every_shard,
)

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

    from tests.admin_api import Api
    from tests.target import Target

EVENT = "order.created"
WINDOW_S = 60

# A publisher process: waits at a barrier, then publishes the same event ROUNDS x N times
# (each round N at once, so they go to Redis in one pipeline) and prints every answer.
_FLOOD = """
import asyncio, sys
import orjson
import redis.asyncio as aioredis
from dispatcher import Client

url, prefix, gate, payload, rounds, n = sys.argv[1:7]

async def main():
    barrier = aioredis.from_url(url)
    answers = []
    async with Client.from_url(url, prefix, dedup_window_s=60) as client:
        await client.ping()
        await barrier.rpush(gate + ":ready", 1)
        await barrier.blpop([gate + ":go"], timeout=60)
        for _ in range(int(rounds)):
            answers += await asyncio.gather(
                *(client.publish("acme", "order.created", orjson.loads(payload))
                  for _ in range(int(n)))
            )
    await barrier.aclose()
    print(orjson.dumps(answers).decode())

asyncio.run(main())
"""


async def _queued(redis: aioredis.Redis, prefix: str, shards: int) -> int:
    """Jobs in the default queue's ready streams, every shard."""
    stream = stream_of("default", "normal")
    return sum([int(await redis.xlen(Keys(prefix, k).ready(stream))) for k in range(shards)])


async def _keys(redis: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key of the prefix with its type and size: what 'changes nothing' compares."""
    found = {}
    async for key in redis.scan_iter(f"{prefix}:*", count=1000):
        kind = await redis.type(key)
        size = await redis.xlen(key) if kind == b"stream" else await redis.memory_usage(key)
        found[key] = (kind, size)
    return found


@pytest.mark.parametrize("shards", [1, 3])
async def test_floods_from_two_processes_are_enqueued_once(
    client: Client, target: Target, redis: aioredis.Redis, redis_url: str, prefix: str, shards: int
) -> None:
    """Two processes publishing the same event 60 times each at once (their payloads' keys in
    other orders) enqueue one event: every answer names its event id and jobs, one answer says
    deduplicated false, and /v1/status counts the other 119."""
    await client.store.adopt_layout(shards)
    hooks = await hooks_in_every_shard(client, target, shards, per_shard=1)
    gate = f"{prefix}-gate"
    payloads = ('{"order": 42, "lines": [1, 2.5]}', '{ "lines":[1,2.50],\n"order":42 }')
    procs = [
        await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", _FLOOD, redis_url, prefix, gate, payload, "3", "20"),
            stdout=asyncio.subprocess.PIPE,
        )
        for payload in payloads
    ]
    try:
        await eventually(
            lambda: _llen_is(redis, f"{gate}:ready", 2), what="both publishers", timeout_s=30
        )
        await redis.rpush(f"{gate}:go", 1, 1)
        async with asyncio.timeout(60):
            outs = [await proc.communicate() for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0]
    answers: list[dict[str, Any]] = [a for out, _ in outs for a in orjson.loads(out)]
    assert len(answers) == 120
    first = next(a for a in answers if not a["deduplicated"])
    assert sum(not a["deduplicated"] for a in answers) == 1
    assert {(a["event_id"], orjson.dumps(a["jobs"])) for a in answers} == {
        (first["event_id"], orjson.dumps(first["jobs"]))
    }
    assert sorted(j["webhook_id"] for j in first["jobs"]) == sorted(h["id"] for h in hooks)
    assert await _queued(redis, prefix, shards) == len(hooks)
    status = await client.status()
    assert status["deduplicated_recent"]["count"] == 119
    await redis.delete(f"{gate}:ready")


async def _llen_is(redis: aioredis.Redis, key: str, n: int) -> bool:
    return int(await redis.llen(key)) == n


async def test_the_window_expires(client: Client, target: Target, redis: aioredis.Redis) -> None:
    """Within a 1 s window a repeat is a duplicate; after it, the same event is new again."""
    await client.create_webhook("acme", target.url())
    first = await client.publish("acme", EVENT, {"n": 1}, dedup_window_s=1)
    again = await client.publish("acme", EVENT, {"n": 1}, dedup_window_s=1)
    assert (first["deduplicated"], again["deduplicated"]) == (False, True)
    assert again["event_id"] == first["event_id"]

    async def new_again() -> dict[str, Any] | None:
        answer = await client.publish("acme", EVENT, {"n": 1}, dedup_window_s=1)
        return dict(answer) if not answer["deduplicated"] else None

    later = await eventually(new_again, timeout_s=5, interval_s=0.1, what="the window's end")
    assert later["event_id"] != first["event_id"]


async def test_identity_is_tenant_type_and_payload_as_json(
    client: Client, target: Target, api: Api, redis: aioredis.Redis, prefix: str
) -> None:
    """Key order and white space do not make another event; another tenant, event type or
    payload (1.0 is not 1) does, and each of those is accepted with 202."""
    for tenant in ("acme", "acme:2"):
        await client.create_webhook(tenant, target.url())
    body = {"tenant_id": "acme", "event_type": EVENT, "dedup_window_s": WINDOW_S}
    first = await api.call("POST", "/v1/events", json={**body, "payload": {"a": 1, "b": [1, 2]}})
    assert (first.status, first.body["deduplicated"]) == (202, False)
    raw = (
        b'{"payload": { "b" : [ 1,2 ],\n "a":1 }, "event_type": "order.created", '
        b'"tenant_id": "acme", "dedup_window_s": 60}'
    )
    same = await api.call("POST", "/v1/events", data=raw)
    assert same.status == 200
    assert same.body == {**first.body, "deduplicated": True}
    others = [
        {**body, "tenant_id": "acme:2", "payload": {"a": 1, "b": [1, 2]}},
        {**body, "event_type": "order.paid", "payload": {"a": 1, "b": [1, 2]}},
        {**body, "payload": {"a": 1, "b": [1, 2.0]}},
        {**body, "payload": {"a": 1, "b": [2, 1]}},
    ]
    for other in others:
        answer = await api.call("POST", "/v1/events", json=other)
        assert (answer.status, answer.body["deduplicated"]) == (202, False), other
        assert answer.body["event_id"] != first.body["event_id"]


async def test_integers_beyond_64_bits_are_refused_not_rounded_into_duplicates(
    client: Client, target: Target, api: Api, redis: aioredis.Redis, prefix: str
) -> None:
    """Two events whose payloads differ only in an integer beyond 64 bits are not rounded to
    one float (the second deduplicated, lost): the API refuses each with 422 invalid_field
    naming the payload, as the Client does, and enqueues nothing."""
    await client.create_webhook("acme", target.url())
    before = await _keys(redis, prefix)
    head = b'{"tenant_id": "acme", "event_type": "order.created", "dedup_window_s": 60, '
    for big in (b"18446744073709551616", b"18446744073709551617", b"-9223372036854775809"):
        answer = await api.call("POST", "/v1/events", data=head + b'"payload": {"id": %s}}' % big)
        assert (answer.status, answer.body["error"]["code"]) == (422, "invalid_field")
        assert "payload" in answer.body["error"]["message"]
        with pytest.raises(InvalidField):
            await client.publish("acme", EVENT, {"id": int(big)}, dedup_window_s=WINDOW_S)
    assert await _keys(redis, prefix) == before
    digits = await api.call(
        "POST", "/v1/events", data=head + b'"payload": {"id": "1%s"}}' % (b"0" * 30)
    )
    assert (digits.status, digits.body["deduplicated"]) == (202, False)
    deep = b"[" * 1_020 + b"1" * 19 + b"]" * 1_020
    nested = await api.call("POST", "/v1/events", data=head + b'"payload": %s}' % deep)
    assert (nested.status, nested.body["error"]["code"]) == (400, "malformed_request")


async def test_a_per_publish_window_overrides_the_clients(
    client: Client, redis_url: str, prefix: str, target: Target
) -> None:
    """With a default window, dedup_window_s=0 turns it off for one publish (and such a
    publish claims nothing); without one, a publish's own window turns it on."""
    await client.create_webhook("acme", target.url())
    async with Client.from_url(redis_url, prefix, dedup_window_s=WINDOW_S) as on:
        first = await on.publish("acme", EVENT, {"n": 1})
        off = await on.publish("acme", EVENT, {"n": 1}, dedup_window_s=0)
        assert (first["deduplicated"], off["deduplicated"]) == (False, False)
        assert off["event_id"] != first["event_id"]
        assert (await on.publish("acme", EVENT, {"n": 1}))["event_id"] == first["event_id"]
    assert client.dedup_window_s == 0
    plain = [await client.publish("acme", EVENT, {"n": 2}) for _ in range(2)]
    assert plain[0]["event_id"] != plain[1]["event_id"]
    windowed = [await client.publish("acme", EVENT, {"n": 2}, dedup_window_s=5) for _ in range(2)]
    assert [a["deduplicated"] for a in windowed] == [False, True]


async def test_an_idempotency_key_decides_its_publish_alone(
    client: Client, target: Target, api: Api
) -> None:
    """A keyed publish neither checks nor claims the hash: its repeat answers 200 with
    deduplicated false, and a keyless identical event after it is a new event."""
    await client.create_webhook("acme", target.url())
    body = {"tenant_id": "acme", "event_type": EVENT, "payload": {}, "dedup_window_s": WINDOW_S}
    keyed = await api.call("POST", "/v1/events", json={**body, "idempotency_key": "k1"})
    repeat = await api.call("POST", "/v1/events", json={**body, "idempotency_key": "k1"})
    assert (keyed.status, repeat.status) == (202, 200)
    assert repeat.body == keyed.body
    assert keyed.body["deduplicated"] is False
    keyless = await api.call("POST", "/v1/events", json=body)
    assert (keyless.status, keyless.body["deduplicated"]) == (202, False)
    assert keyless.body["event_id"] != keyed.body["event_id"]
    other_key = await api.call("POST", "/v1/events", json={**body, "idempotency_key": "k2"})
    assert (other_key.status, other_key.body["deduplicated"]) == (202, False)


@pytest.mark.parametrize("value", [-1, 86_401, 1.5, True, "60"])
async def test_a_bad_window_is_refused_naming_the_field(
    client: Client, target: Target, api: Api, redis: aioredis.Redis, prefix: str, value: Any
) -> None:
    """A window that is not a whole number of seconds from 0 to 86400 answers 422
    invalid_field naming dedup_window_s (the Client raises InvalidField) and writes nothing."""
    await client.create_webhook("acme", target.url())
    before = await _keys(redis, prefix)
    body = {"tenant_id": "acme", "event_type": EVENT, "payload": {}, "dedup_window_s": value}
    answer = await api.call("POST", "/v1/events", json=body)
    assert answer.status == 422
    assert answer.body["error"]["code"] == "invalid_field"
    assert "dedup_window_s" in answer.body["error"]["message"]
    with pytest.raises(InvalidField) as raised:
        await client.publish("acme", EVENT, {}, dedup_window_s=value)
    assert raised.value.field == "dedup_window_s"
    with pytest.raises(InvalidField):
        await client.publish_many([body])
    assert await _keys(redis, prefix) == before
    with pytest.raises(InvalidField):
        Client.from_url("redis://127.0.0.1:1", dedup_window_s=-1)


async def test_a_delivery_to_one_webhook_is_never_deduplicated(
    client: Client, target: Target, api: Api
) -> None:
    """Deliveries to one webhook take no dedup_window_s (422) and are each enqueued, even from
    a client whose default window is on."""
    hook = await client.create_webhook("acme", target.url())
    path = f"/v1/webhooks/{hook['id']}/deliveries"
    body = {"event_type": "a", "payload": {}, "dedup_window_s": 5}
    refused = await api.call("POST", path, json=body)
    assert (refused.status, refused.body["error"]["code"]) == (422, "invalid_field")
    client.dedup_window_s = WINDOW_S
    answers = [await api.call("POST", path, json={"event_type": "a", "payload": {}}) for _ in "ab"]
    assert [a.status for a in answers] == [202, 202]
    assert answers[0].body["event_id"] != answers[1].body["event_id"]
    assert answers[1].body["deduplicated"] is False


async def test_publish_many_says_deduplicated_per_event(client: Client, target: Target) -> None:
    """In one batch, an event identical to an earlier one (of the batch or before it) answers
    its answer with deduplicated true; the others are accepted."""
    await client.create_webhook("acme", target.url())
    early = await client.publish("acme", EVENT, {"n": 0}, dedup_window_s=WINDOW_S)
    event = {"tenant_id": "acme", "event_type": EVENT, "dedup_window_s": WINDOW_S}
    results = await client.publish_many(
        [
            {**event, "payload": {"n": 1}},
            {**event, "payload": {"n": 1}},
            {**event, "payload": {"n": 2}},
            {**event, "payload": {"n": 0}},
            {**event, "payload": {"n": 1}, "dedup_window_s": 0},
        ]
    )
    answers = [r for r in results if isinstance(r, dict)]
    assert len(answers) == 5
    assert [a["deduplicated"] for a in answers] == [False, True, False, True, False]
    assert answers[1] == {**answers[0], "deduplicated": True}
    assert answers[3]["event_id"] == early["event_id"]
    assert len({a["event_id"] for a in answers}) == 4


async def test_a_retry_after_a_failed_shard_completes_the_first_event(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """When one shard fails a deduplicated publish, the same event published again answers the
    first event (deduplicated) with every shard's jobs, each enqueued once."""
    await client.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(client, target, 3, per_shard=1)
    broken = Keys(prefix, 2).jobs
    await redis.set(broken, "not a hash")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await client.publish("acme", EVENT, {"n": 1}, dedup_window_s=WINDOW_S)
    in_broken = sum(shard_of(h["id"]) == 2 for h in hooks)
    assert await _queued(redis, prefix, 3) == len(hooks) - in_broken
    await redis.delete(broken)
    answer = await client.publish("acme", EVENT, {"n": 1}, dedup_window_s=WINDOW_S)
    assert answer["deduplicated"] is True
    assert sorted(j["webhook_id"] for j in answer["jobs"]) == sorted(h["id"] for h in hooks)
    assert await _queued(redis, prefix, 3) == len(hooks)
    again = await client.publish("acme", EVENT, {"n": 1}, dedup_window_s=WINDOW_S)
    assert again == answer
    assert await _queued(redis, prefix, 3) == len(hooks)


async def test_a_duplicate_completing_a_failed_shard_keeps_the_first_schedule(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """A duplicate with another deliver_at and priority that completes the first event after a
    failed shard writes the missing jobs with the first event's deliver_at and priority."""
    await client.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(client, target, 3, per_shard=1)
    broken = Keys(prefix, 2).jobs
    await redis.set(broken, "not a hash")
    later = "2099-01-01T00:00:00.000Z"
    with pytest.raises(Exception, match="WRONGTYPE"):
        await client.publish(
            "acme", EVENT, {"n": 1}, deliver_at=later, priority="high", dedup_window_s=WINDOW_S
        )
    await redis.delete(broken)
    answer = await client.publish("acme", EVENT, {"n": 1}, dedup_window_s=WINDOW_S)
    assert len(answer["jobs"]) == len(hooks)
    jobs = [await client.get_job(job["id"]) for job in answer["jobs"]]
    assert {(j["state"], j["priority"], j["next_attempt_at"]) for j in jobs if j} == {
        ("scheduled", "high", later)
    }
    assert await _queued(redis, prefix, 3) == 0


async def test_thousands_of_matching_webhooks_are_published_whole(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """An event matching 4,100 webhooks (more than Lua unpacks into one command) is enqueued
    whole, scheduled or not, and its duplicate answers it: no stream entries without records,
    no dedup key naming an event that failed."""
    limit = asyncio.Semaphore(64)

    async def create() -> None:
        async with limit:
            await client.create_webhook("acme", "https://hooks.example.com/in")

    await asyncio.gather(*(create() for _ in range(4_100)))
    later = "2099-01-01T00:00:00Z"
    for n, deliver_at in enumerate((None, later)):
        answer = await client.publish(
            "acme", EVENT, {"n": n}, deliver_at=deliver_at, dedup_window_s=WINDOW_S
        )
        assert answer["matched"] == 4_100
        again = await client.publish("acme", EVENT, {"n": n}, dedup_window_s=WINDOW_S)
        assert again == {**answer, "deduplicated": True}
    assert await _queued(redis, prefix, 1) == 4_100
    assert await redis.zcard(Keys(prefix, 0).delayed(stream_of("default", "normal"))) == 4_100
    assert await redis.hlen(Keys(prefix, 0).jobs) == 8_200


@pytest.mark.parametrize("broken", ["ready", "jobs", "delayed"])
async def test_a_failed_publish_claims_nothing(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str, broken: str
) -> None:
    """A publish whose stream entry, record or due time cannot be written undoes its dedup
    key with its other writes: the same event published after the repair is a new event with
    its job, not a duplicate of one that was never enqueued."""
    await client.create_webhook("acme", target.url())
    keys, stream = Keys(prefix, 0), stream_of("default", "normal")
    key = {"ready": keys.ready(stream), "jobs": keys.jobs, "delayed": keys.delayed(stream)}[broken]
    deliver_at = "2099-01-01T00:00:00Z" if broken == "delayed" else None
    await redis.set(key, "not what it should be")
    before = await _keys(redis, prefix)
    with pytest.raises(Exception, match="WRONGTYPE"):
        await client.publish("acme", EVENT, {}, deliver_at=deliver_at, dedup_window_s=WINDOW_S)
    after = await _keys(redis, prefix)  # an entry added, then undone, leaves its stream empty
    assert {k: v for k, v in after.items() if v != (b"stream", 0)} == before
    await redis.delete(key)
    answer = await client.publish("acme", EVENT, {}, deliver_at=deliver_at, dedup_window_s=WINDOW_S)
    assert (answer["deduplicated"], answer["matched"]) == (False, 1)
    assert await client.get_job(answer["jobs"][0]["id"]) is not None


async def test_out_of_memory_and_a_wrong_type_dedup_key_fail_cleanly(tmp_path: Path) -> None:
    """At maxmemory a new event and a duplicate each raise RedisOutOfMemory, and a dedup key
    of the wrong type raises its WRONGTYPE error; none of them writes anything."""
    server = RedisServer(tmp_path / "oom")
    server.start()
    try:
        async with Client.from_url(server.url, prefix="p", dedup_window_s=WINDOW_S) as client:
            redis = client.store.redis
            await client.create_webhook("acme", "https://hooks.example.com/in")
            await client.publish("acme", EVENT, {"n": 1})
            before = await _keys(redis, "p")
            used = int((await redis.info("memory"))["used_memory"])
            await redis.config_set("maxmemory", used - 1024)  # already over it
            for n in (1, 2):
                with pytest.raises(RedisOutOfMemory):
                    await client.publish("acme", EVENT, {"n": n})
            await redis.config_set("maxmemory", 0)
            assert await _keys(redis, "p") == before
            [dedup] = [k async for k in redis.scan_iter("p:*:dedup:*")]
            await redis.delete(dedup)
            await redis.rpush(dedup, "a list")
            before = await _keys(redis, "p")
            with pytest.raises(Exception, match="WRONGTYPE"):
                await client.publish("acme", EVENT, {"n": 1})
            assert await _keys(redis, "p") == before
    finally:
        server.stop()


@pytest.mark.parametrize("late", ["duplicate", "first"])
async def test_a_part_that_runs_after_the_window_ended_on_shard_0_writes_nothing_twice(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str, late: str
) -> None:
    """When shard 0's dedup key expires (first: it was written first) between one publish's
    shard 0 part and its other shards' parts, while the next identical event is accepted, the
    late part neither writes the first event's jobs again nor makes the next event's jobs be
    written again by that one's duplicates: each event's jobs are enqueued once."""
    await client.store.adopt_layout(2)
    hooks = await hooks_in_every_shard(client, target, 2, per_shard=2)
    shards, known = await client.store.all_shards(), {"default"}

    def event() -> publishing.Publication:
        event_id, job_prefix = new_event_ids()
        return publishing.Publication(
            "acme", EVENT, b"{}", event_id, job_prefix, dedup_window_s=WINDOW_S
        )

    first = event()
    if late == "duplicate":  # the first event whole; a duplicate's shard 0 part, then a pause
        await publishing.publish(client.store, first, known)
        pub = event()
    else:  # the first event's own shard 0 part, then a pause
        pub = first
    _, decided = await publishing._publish_in(shards[0], pub, known)
    await redis.delete(Keys(prefix, 0).dedup("acme", first.dedup_hash))  # its window ends
    _, second = await publishing.publish(client.store, event(), known)
    await publishing._publish_in(shards[1], publishing._of_event(pub, decided), known)
    again = (await publishing.publish(client.store, event(), known))[1]
    assert again == {**second, "deduplicated": True}
    assert await _queued(redis, prefix, 2) == 2 * len(hooks)


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            return response.status, await response.text()
    except aiohttp.ClientError:
        return 0, ""


async def test_the_daemons_window_is_its_apis_default(
    redis_url: str, prefix: str, client: Client, target: Target, logs_dir: Path
) -> None:
    """With events.dedup_window_s set, `dispatcher run`'s POST /v1/events answers an identical
    event 200 deduplicated, counted in /metrics and /v1/status."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = daemon_env(
        redis_url,
        prefix,
        admin_listen=f"127.0.0.1:{port}",
        admin_token=TOKEN,
        events_dedup_window_s="60",
        delivery_queues="elsewhere",  # nothing is delivered: only the API is under test
    )
    await client.create_webhook("acme", target.url())
    daemon = Daemon(env, logs_dir / "dedup.log").start()
    try:
        async with aiohttp.ClientSession() as http:
            await eventually(lambda: _ready(http, base), timeout_s=20, what="/readyz")
            statuses = []
            for _ in range(3):
                async with http.post(
                    f"{base}/v1/events",
                    json={"tenant_id": "acme", "event_type": EVENT, "payload": {"n": 1}},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as response:
                    statuses.append((response.status, (await response.json())["deduplicated"]))
            assert statuses == [(202, False), (200, True), (200, True)]
            _, metrics = await _get(http, f"{base}/metrics")
            assert "dispatcher_events_deduplicated_total 2.0" in metrics
            _, status = await _get(http, f"{base}/v1/status")
            assert orjson.loads(status)["deduplicated_recent"]["count"] == 2
    finally:
        daemon.stop()


async def _ready(http: aiohttp.ClientSession, base: str) -> bool:
    return (await _get(http, f"{base}/readyz"))[0] == 200


_PAYLOADS: tuple[Any, ...] = (
    {"a": 1, "b": 2},
    {"b": 2, "a": 1},
    {"a": 1, "b": 2.0},
    {"a": [1, 2]},
    {},
    [{}],
)


@settings(
    max_examples=10,
    derandomize=True,  # seeded: the same examples on every run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=st.lists(
        st.tuples(st.sampled_from("tu"), st.sampled_from("xy"), st.sampled_from(_PAYLOADS)),
        min_size=1,
        max_size=12,
    ),
    batched=st.booleans(),
)
async def test_each_identity_is_enqueued_once(
    client: Client,
    target: Target,
    redis: aioredis.Redis,
    prefix: str,
    events: list[tuple[str, str, Any]],
    batched: bool,
) -> None:
    """Whatever the sequence of events, one by one or in one publish_many, each identity
    (tenant, event type, payload as JSON) is enqueued once and its repeats answer its answer."""
    tag = uuid.uuid4().hex[:8]
    for tenant in "tu":
        await client.create_webhook(f"{tag}-{tenant}", target.url())
    before = await _queued(redis, prefix, 1)
    sent = [
        {"tenant_id": f"{tag}-{t}", "event_type": e, "payload": p, "dedup_window_s": WINDOW_S}
        for t, e, p in events
    ]
    if batched:
        results = await client.publish_many(sent)
        answers = [dict(r) for r in results if isinstance(r, dict)]
    else:
        answers = [
            dict(await client.publish(t, e, p, dedup_window_s=WINDOW_S))
            for t, e, p in ((e["tenant_id"], e["event_type"], e["payload"]) for e in sent)
        ]
    assert len(answers) == len(sent)
    first: dict[tuple[str, str, str], dict[str, Any]] = {}
    for event, answer in zip(sent, answers, strict=True):
        identity = (
            event["tenant_id"],
            event["event_type"],
            json.dumps(event["payload"], sort_keys=True),
        )
        if identity in first:
            assert answer == {**first[identity], "deduplicated": True}
        else:
            assert answer["deduplicated"] is False
            first[identity] = answer
    assert len({a["event_id"] for a in answers}) == len(first)
    assert await _queued(redis, prefix, 1) - before == len(first)
