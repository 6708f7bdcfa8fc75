"""Publish answers say what happened: an idempotency key reused with another request is refused
(422 ``idempotency_key_reused``, nothing enqueued), and every answer says how many webhooks the
event ``matched`` (issue 15, finding 7)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from dispatcher import DispatcherError, IdempotencyKeyReused
from dispatcher.queue import records
from dispatcher.queue.keys import Keys
from tests.admin_api import start_api
from tests.helpers import hooks_in_every_shard

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from tests.admin_api import Api
    from tests.target import Target

EVENT_TYPE = "order.created"
LATER = "2999-01-01T00:00:00+00:00"
PRIORITIES = ("high", "normal", "low")
#: Each way to publish (each example gives each its own key).
WAYS = ("http_events", "http_deliveries", "client_publish", "client_deliver", "publish_many")
#: How a repeat differs from the first request; "" repeats it exactly.
CHANGES = ("", "payload", "event_type", "deliver_at", "priority")

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@dataclass(frozen=True)
class Request:
    event_type: str
    payload: Any
    deliver_at: str | None
    priority: str

    def changed(self, change: str) -> Request:
        """The same request with one part changed ("": the same request)."""
        if change == "payload":
            return Request(self.event_type, {"not": self.payload}, self.deliver_at, self.priority)
        if change == "event_type":
            return Request(f"{self.event_type}.v2", self.payload, self.deliver_at, self.priority)
        if change == "deliver_at":
            other = "2998-06-01T12:00:00+00:00" if self.deliver_at else LATER
            return Request(self.event_type, self.payload, other, self.priority)
        if change == "priority":
            other = PRIORITIES[(PRIORITIES.index(self.priority) + 1) % len(PRIORITIES)]
            return Request(self.event_type, self.payload, self.deliver_at, other)
        return self


_requests = st.builds(
    Request,
    event_type=st.just(EVENT_TYPE),
    payload=_json,
    deliver_at=st.sampled_from([None, LATER]),
    priority=st.sampled_from(PRIORITIES),
)
_keys = st.text("abcxyz019:._-", min_size=1, max_size=12)


@dataclass
class Tenant:
    """A tenant of one example: ``subscribed`` webhooks take the event, ``bystander`` does not
    (it receives deliveries, which go to one webhook whatever it subscribes to)."""

    id: str
    subscribed: list[str]
    bystander: str


@dataclass
class Ways:
    """Every way to publish: the admin API over HTTP and the Python client."""

    api: Api
    client: Client

    async def send(
        self, way: str, tenant: Tenant, key: str, request: Request
    ) -> tuple[int | None, dict[str, Any]]:
        """(HTTP status, or None for publish_many, which has none; the answer or error body)."""
        fields: dict[str, Any] = {
            "event_type": request.event_type,
            "payload": request.payload,
            "idempotency_key": key,
            "priority": request.priority,
        }
        if request.deliver_at is not None:
            fields["deliver_at"] = request.deliver_at
        if way.startswith("http_"):
            path = (
                "/v1/events"
                if way == "http_events"
                else f"/v1/webhooks/{tenant.bystander}/deliveries"
            )
            body = {"tenant_id": tenant.id, **fields} if way == "http_events" else fields
            answer = await self.api.call("POST", path, json=body)
            return answer.status, answer.body
        try:
            return await self._send_python(way, tenant, fields)
        except DispatcherError as exc:
            return exc.http_status, {"error": {"code": exc.code, "message": exc.message}}

    async def _send_python(
        self, way: str, tenant: Tenant, fields: dict[str, Any]
    ) -> tuple[int | None, dict[str, Any]]:
        event_type, payload = fields.pop("event_type"), fields.pop("payload")
        if way == "client_publish":
            new, answer = await self.client.publish_checked(
                tenant.id, event_type, payload, **fields
            )
            return 202 if new else 200, dict(answer)
        if way == "client_deliver":
            new, answer = await self.client.deliver(tenant.bystander, event_type, payload, **fields)
            return 202 if new else 200, dict(answer)
        # A second event, for a tenant without webhooks, shows the answers are per event (and
        # writes nothing: no webhook, no key).
        lone = {"tenant_id": f"lone-{uuid.uuid4().hex[:8]}", "event_type": event_type, "payload": 1}
        event = {"tenant_id": tenant.id, "event_type": event_type, "payload": payload, **fields}
        result, other = await self.client.publish_many([event, lone])
        assert isinstance(other, dict)
        assert (other["jobs"], other["matched"]) == ([], 0)
        if isinstance(result, DispatcherError):
            raise result
        return None, dict(result)


@pytest.fixture(params=[1, 3], ids=["one_shard", "three_shards"])
async def ways(request: pytest.FixtureRequest, client: Client) -> AsyncIterator[Ways]:
    """Both ways in, over a store of one shard or three (keyed publishes then take the sharded
    path: shard 0 first)."""
    await client.store.adopt_layout(request.param)
    _app, api = await start_api(client)
    yield Ways(api, client)
    await api.close()


async def _tenant(client: Client, target: Target, subscribed: int) -> Tenant:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    hooks = [
        (await client.create_webhook(tenant, target.url(), [EVENT_TYPE]))["id"]
        for _ in range(subscribed)
    ]
    bystander = await client.create_webhook(tenant, target.url(), ["other.type"])
    return Tenant(tenant, hooks, bystander["id"])


async def _snapshot(redis: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key of the test's prefix with its value (not its DUMP, which follows a hash's
    internal order, and reads may rehash)."""
    keys = [key async for key in redis.scan_iter(f"{prefix}:*", count=1000)]
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    kinds = await pipe.execute()
    for key, kind in zip(keys, kinds, strict=True):
        if kind == b"string":
            pipe.get(key)
        elif kind == b"hash":
            pipe.hgetall(key)
        elif kind == b"zset":
            pipe.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            pipe.xrange(key)
        else:
            pipe.dump(key)
    return dict(zip(keys, await pipe.execute(), strict=True))


def _matched(way: str, tenant: Tenant) -> int:
    return 1 if way in {"http_deliveries", "client_deliver"} else len(tenant.subscribed)


@settings(
    max_examples=6,
    derandomize=True,  # seeded: the same examples on every run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=_requests, key_text=_keys, subscribed=st.integers(0, 3))
async def test_a_reused_idempotency_key_answers_or_refuses_by_its_request(
    ways: Ways,
    target: Target,
    redis: aioredis.Redis,
    prefix: str,
    request: Request,
    key_text: str,
    subscribed: int,
) -> None:
    """Every way to publish answers a repeat of a key with the same request 200 and the first
    answer, refuses it with a different request 422 idempotency_key_reused naming the key
    without changing Redis, treats another tenant's (or webhook's) key as another key, and
    says how many webhooks the event matched."""
    tenant = await _tenant(ways.client, target, subscribed)
    other = await _tenant(ways.client, target, 0)
    for way in WAYS:
        key = f"{key_text}:{way}"  # tenant's events (HTTP, Client, publish_many) share a scope
        status, first = await ways.send(way, tenant, key, request)
        assert status in {202, None}, first
        assert first["matched"] == len(first["jobs"]) == _matched(way, tenant)
        before = await _snapshot(redis, prefix)
        for change in CHANGES:  # each answered from the record, or refused
            status, again = await ways.send(way, tenant, key, request.changed(change))
            if change == "":
                assert status in {200, None}, (way, again)
                assert again == first
            else:
                assert status == 422, (way, change, again)
                assert again["error"]["code"] == "idempotency_key_reused"
                message = again["error"]["message"]
                assert message.startswith("idempotency_key:")
                assert repr(key) in message
                assert "24 h" in message
        assert await _snapshot(redis, prefix) == before, way
        status, elsewhere = await ways.send(way, other, key, request)
        assert status in {202, None}, (way, elsewhere)
        assert elsewhere["event_id"] != first["event_id"]
        assert elsewhere["matched"] == _matched(way, other)


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_record_from_before_fingerprints_still_answers_as_a_repeat(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str, shards: int
) -> None:
    """An idempotency record written by the version before fingerprints (the answer alone)
    still answers a repeat with its first answer, matched included, whatever the request."""
    await client.store.adopt_layout(shards)
    hooks = await hooks_in_every_shard(client, target, shards, per_shard=1)
    first = await client.publish("acme", "a.b", {"n": 1}, idempotency_key="old")
    for shard in range(shards):
        assert await redis.delete(Keys(prefix, shard).fingerprint("acme", "old")) == 1
    before = await _snapshot(redis, prefix)
    new, again = await client.publish_checked("acme", "x.y", {"n": 2}, idempotency_key="old")
    assert (new, again) == (False, first)
    assert again["matched"] == len(hooks)
    assert await _snapshot(redis, prefix) == before


def _previous_release_answer(records: list[bytes]) -> dict[str, Any]:
    """The answer the previous release (f460aad) gives a repeated key: its publish.lua returns
    each shard's record as it is, and its ``_answer`` (copied here) reads them."""
    event_id = ""
    jobs = []
    for joined in (record.decode() for record in records):
        first, *pairs = joined.split(" ")
        event_id = event_id or first
        jobs += [{"id": pairs[i], "webhook_id": pairs[i + 1]} for i in range(0, len(pairs), 2)]
    if len(records) > 1:
        jobs.sort(key=lambda job: job["webhook_id"])
    return {"event_id": event_id, "jobs": jobs}


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_producer_on_the_previous_release_still_reads_a_repeat_answer(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str, shards: int
) -> None:
    """A producer whose Client is not upgraded yet gets this release's first answer for a
    repeated key (not a fingerprint glued to the event id), and each record's fingerprint lives
    beside it, in its slot, for exactly as long."""
    await client.store.adopt_layout(shards)
    hooks = await hooks_in_every_shard(client, target, shards, per_shard=1)
    first = await client.publish("acme", "e", {"n": 1}, idempotency_key="k")
    assert first["matched"] == len(hooks)
    names = [Keys(prefix, shard).idempotency("acme", "k") for shard in range(shards)]
    records = [cast("bytes", await redis.get(name)) for name in names]
    assert _previous_release_answer(records) == {
        "event_id": first["event_id"],
        "jobs": first["jobs"],
    }
    for shard, record in enumerate(names):
        fingerprint = Keys(prefix, shard).fingerprint("acme", "k")
        assert key_slot(record.encode()) == key_slot(fingerprint.encode())
        expires = await redis.pexpiretime(record)
        assert expires > 0
        assert await redis.pexpiretime(fingerprint) == expires


@pytest.mark.parametrize("way", ["publish", "publish_many"])
async def test_shard_0s_record_decides_when_it_expired_before_another_shards(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str, way: str
) -> None:
    """When shard 0's record of a key has expired (written first, it expires first) while
    another shard's has not, the key is new again: a publish is one new event on every shard,
    never a 422 "nothing enqueued" after shard 0 enqueued; its repeat answers it, and the
    expired request is now another request."""
    await client.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(client, target, 3, per_shard=1)

    async def send(payload: Any) -> shapes.PublishAnswer:
        if way == "publish":
            return await client.publish("acme", "e", payload, idempotency_key="k")
        event = {"tenant_id": "acme", "event_type": "e", "payload": payload}
        [answer] = await client.publish_many([{**event, "idempotency_key": "k"}])
        if isinstance(answer, DispatcherError):
            raise answer
        return answer

    first = await send({"n": 1})
    keys = Keys(prefix, 0)
    await redis.delete(keys.idempotency("acme", "k"), keys.fingerprint("acme", "k"))  # expired
    second = await send({"n": 2})
    assert second["event_id"] != first["event_id"]
    assert second["matched"] == len(hooks)
    prefix_of_jobs = "job_" + second["event_id"].removeprefix("evt_") + "."
    assert all(job["id"].startswith(prefix_of_jobs) for job in second["jobs"])
    assert await send({"n": 2}) == second
    before = await _snapshot(redis, prefix)
    with pytest.raises(IdempotencyKeyReused):
        await send({"n": 1})
    assert await _snapshot(redis, prefix) == before


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_retry_whose_payload_keys_come_in_another_order_is_a_repeat(
    client: Client, target: Target, shards: int
) -> None:
    """A retry of the same JSON value, its objects' keys in another order (a rebuilt dict,
    another encoder), answers the first answer, and the job keeps the first request's bytes;
    1 and 1.0 are still different requests."""
    await client.store.adopt_layout(shards)
    await client.create_webhook("acme", target.url(), ["e"])
    payload = {"a": 1, "b": {"x": [1, {"p": 1, "q": 2}], "y": None}}
    first = await client.publish("acme", "e", payload, idempotency_key="k1")
    reordered = {"b": {"y": None, "x": [1, {"q": 2, "p": 1}]}, "a": 1}
    assert await client.publish("acme", "e", reordered, idempotency_key="k1") == first
    job = await records.get_job(client.store, first["jobs"][0]["id"])
    assert job is not None
    assert job.payload == orjson.dumps(payload)
    with pytest.raises(IdempotencyKeyReused):
        await client.publish("acme", "e", {**payload, "a": 1.0}, idempotency_key="k1")


async def test_matched_counts_the_webhooks_an_event_went_to(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """A publish that matches no webhook (a typo in the event type) answers 202 with matched 0
    and enqueues nothing; one that matches answers how many."""
    for _ in range(2):
        await client.create_webhook("acme", target.url(), [EVENT_TYPE])
    _app, api = await start_api(client)
    try:
        before = await _snapshot(redis, prefix)
        typo = {"tenant_id": "acme", "event_type": "order.craeted", "payload": {}}
        missed = await api.call("POST", "/v1/events", json=typo)
        assert (missed.status, missed.body["jobs"], missed.body["matched"]) == (202, [], 0)
        assert await _snapshot(redis, prefix) == before
        hit = await api.call("POST", "/v1/events", json={**typo, "event_type": EVENT_TYPE})
        assert (hit.status, hit.body["matched"], len(hit.body["jobs"])) == (202, 2, 2)
    finally:
        await api.close()


def test_the_refusal_is_a_dispatcher_error_with_the_apis_code() -> None:
    """Python callers catch the refusal as a DispatcherError with the API's code and status."""
    error = IdempotencyKeyReused("order-1")
    assert isinstance(error, DispatcherError)
    assert (error.code, error.http_status, error.key) == ("idempotency_key_reused", 422, "order-1")
