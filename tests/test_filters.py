"""Payload filters: a webhook whose filter does not match an event's payload gets no job, the
publish answer lists only the jobs created, and an invalid filter is refused naming its path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from dispatcher import InvalidField
from dispatcher.filters import MAX_BYTES, MAX_DEPTH, MAX_IN, MAX_NODES
from dispatcher.ids import shard_of
from tests.admin_api import start_api
from tests.helpers import hooks_in_every_shard

if TYPE_CHECKING:
    from dispatcher import Client
    from tests.target import Target

EVENT = "order.created"
ORDER = {
    "type": "card",
    "data": {
        "amount": 150,
        "price": 9.5,
        "currency": "EUR",
        "paid": True,
        "note": None,
        "tags": ["vip", "new"],
        "customer": {"id": "cus_1", "country": "FR"},
        "code": "7",
    },
}

#: (filter, payload, whether the webhook gets a job)
CASES: list[tuple[dict[str, Any], Any, bool]] = [
    ({}, ORDER, True),
    # a plain value is $eq; dotted paths; strict types
    ({"type": "card"}, ORDER, True),
    ({"type": "bank"}, ORDER, False),
    ({"data.customer.country": "FR"}, ORDER, True),
    ({"data.amount": 150.0}, ORDER, True),
    ({"data.amount": "150"}, ORDER, False),
    ({"data.paid": 1}, ORDER, False),
    ({"data.paid": True}, ORDER, True),
    ({"data.note": None}, ORDER, True),
    ({"data.missing": None}, ORDER, False),
    ({"data.amount": {"$eq": 150}}, ORDER, True),
    ({"data.amount": {"$ne": 150}}, ORDER, False),
    ({"data.amount": {"$ne": "150"}}, ORDER, True),
    # order: numbers with numbers, strings with strings (by bytes), never across
    ({"data.amount": {"$gt": 100}}, ORDER, True),
    ({"data.amount": {"$gt": 150}}, ORDER, False),
    ({"data.amount": {"$gte": 150}}, ORDER, True),
    ({"data.amount": {"$lt": 150}}, ORDER, False),
    ({"data.amount": {"$lte": 150}}, ORDER, True),
    ({"data.price": {"$gt": 9, "$lt": 10}}, ORDER, True),
    ({"data.code": {"$gt": 5}}, ORDER, False),
    ({"data.code": {"$lte": 5}}, ORDER, False),
    ({"data.amount": {"$gt": "1"}}, ORDER, False),
    ({"data.currency": {"$gte": "EUR", "$lt": "EUS"}}, ORDER, True),
    ({"data.currency": {"$gt": "EU"}}, ORDER, True),
    ({"data.currency": {"$lt": "eur"}}, ORDER, True),  # 'E' < 'e' in bytes, whatever the locale
    ({"data.paid": {"$gt": 0}}, ORDER, False),
    # lists of values
    ({"data.currency": {"$in": ["USD", "EUR"]}}, ORDER, True),
    ({"data.currency": {"$in": ["USD"]}}, ORDER, False),
    ({"data.currency": {"$in": []}}, ORDER, False),
    ({"data.amount": {"$in": ["150", True]}}, ORDER, False),
    ({"data.currency": {"$nin": ["USD", "GBP"]}}, ORDER, True),
    ({"data.currency": {"$nin": ["EUR"]}}, ORDER, False),
    # missing paths: only $exists false, $ne and $nin match
    ({"data.refund": {"$exists": False}}, ORDER, True),
    ({"data.refund": {"$exists": True}}, ORDER, False),
    ({"data.note": {"$exists": True}}, ORDER, True),
    ({"data.refund": {"$ne": 1}}, ORDER, True),
    ({"data.refund": {"$nin": [1]}}, ORDER, True),
    ({"data.refund": {"$gt": 0}}, ORDER, False),
    ({"data.refund": {"$lte": 0}}, ORDER, False),
    ({"data.amount.value": {"$exists": False}}, ORDER, True),  # a step into a number
    # arrays are values, not traversed
    ({"data.tags": "vip"}, ORDER, False),
    ({"data.tags": {"$ne": "vip"}}, ORDER, True),
    ({"data.tags": {"$exists": True}}, ORDER, True),
    ({"data.tags.0": {"$exists": False}}, ORDER, True),
    ({"data.customer": {"$exists": True}}, ORDER, True),
    # logic, nested
    ({"$and": [{"type": "card"}, {"data.amount": {"$gt": 100}}]}, ORDER, True),
    ({"$and": [{"type": "card"}, {"data.amount": {"$gt": 200}}]}, ORDER, False),
    ({"$or": [{"type": "bank"}, {"data.amount": {"$gt": 100}}]}, ORDER, True),
    ({"$or": [{"type": "bank"}, {"data.amount": {"$gt": 200}}]}, ORDER, False),
    ({"$not": {"type": "card"}}, ORDER, False),
    ({"$not": {"type": "bank"}}, ORDER, True),
    ({"data.amount": {"$not": {"$gt": 200}}}, ORDER, True),
    ({"data.amount": {"$not": {"$gt": 100, "$lt": 200}}}, ORDER, False),
    ({"data.refund": {"$not": {"$gt": 0}}}, ORDER, True),
    (
        {
            "$or": [
                {"$and": [{"type": "bank"}, {"data.amount": {"$gt": 0}}]},
                {"$not": {"$or": [{"data.currency": "USD"}, {"data.paid": False}]}},
            ]
        },
        ORDER,
        True,
    ),
    ({"type": "card", "data.currency": "USD"}, ORDER, False),  # the entries all hold
    # a payload that is not an object has no paths
    ({"type": "card"}, [ORDER], False),
    ({"type": {"$exists": False}}, [ORDER], True),
    ({"type": {"$ne": "card"}}, 42, True),
    ({"amount": {"$gt": 1}}, 42, False),
    ({"type": {"$exists": True}}, "card", False),
    ({"type": {"$nin": ["card"]}}, None, True),
    # numbers are doubles: 2**53 + 1 reads as 2**53
    ({"n": 2**53}, {"n": 2**53 + 1}, True),
]


@pytest.mark.parametrize("via", ["client", "api"])
async def test_each_operator_decides_whether_a_webhook_gets_a_job(
    client: Client, target: Target, via: str
) -> None:
    """Each filter, published beside an unfiltered webhook: the filtered one gets a job exactly
    when its filter matches, and the answer lists only the jobs created."""
    _app, api = await start_api(client)
    try:
        for n, (filter_, payload, expected) in enumerate(CASES):
            tenant = f"filters-{via}-{n}"
            plain = await client.create_webhook(tenant, target.url(), [EVENT])
            if via == "client":
                hook = await client.create_webhook(tenant, target.url(), [EVENT], filter=filter_)
                answer = await client.publish(tenant, EVENT, payload)
            else:
                body = {"tenant_id": tenant, "url": target.url(), "filter": filter_}
                created = await api.call("POST", "/v1/webhooks", json=body)
                assert (created.status, created.body["filter"]) == (201, filter_)
                hook = created.body
                event = {"tenant_id": tenant, "event_type": EVENT, "payload": payload}
                published = await api.call("POST", "/v1/events", json=event)
                assert published.status == 202
                answer = published.body
            got = {job["webhook_id"] for job in answer["jobs"]}
            wanted = {plain["id"], hook["id"]} if expected else {plain["id"]}
            assert (got, answer["matched"]) == (wanted, len(wanted)), (filter_, payload)
    finally:
        await api.close()


async def test_a_filter_applies_to_publish_many_and_scheduled_events(
    client: Client, target: Target
) -> None:
    """Batched and scheduled publishes obey the filter as single ones do."""
    hook = await client.create_webhook("batch", target.url(), filter={"n": {"$gte": 2}})
    answers = await client.publish_many(
        [{"tenant_id": "batch", "event_type": EVENT, "payload": {"n": n}} for n in range(4)]
    )
    assert [a["matched"] for a in answers if isinstance(a, dict)] == [0, 0, 1, 1]
    later = await client.publish("batch", EVENT, {"n": 5}, deliver_at="2999-01-01T00:00:00Z")
    assert [job["webhook_id"] for job in later["jobs"]] == [hook["id"]]
    assert (await client.publish("batch", EVENT, {"n": 1}, deliver_at="2999-01-01T00:00:00Z"))[
        "matched"
    ] == 0


async def test_a_direct_delivery_ignores_the_filter(client: Client, target: Target) -> None:
    """A delivery asked for one webhook on purpose is not filtered (as it ignores event types)."""
    hook = await client.create_webhook("direct", target.url(), filter={"n": 1})
    _new, answer = await client.deliver(hook["id"], EVENT, {"n": 2})
    assert answer["matched"] == 1


async def test_patch_adds_changes_and_removes_a_filter(client: Client, target: Target) -> None:
    """Each PATCH of the filter decides the very next publish; null removes it."""
    _app, api = await start_api(client)
    try:
        hook = await client.create_webhook("patch", target.url(), [EVENT])
        path = f"/v1/webhooks/{hook['id']}"

        async def gets_job(payload: Any) -> bool:
            return (await client.publish("patch", EVENT, payload))["matched"] == 1

        assert await gets_job({"kind": "a"})
        added = await api.call("PATCH", path, json={"filter": {"kind": "b"}})
        assert (added.status, added.body["filter"]) == (200, {"kind": "b"})
        assert not await gets_job({"kind": "a"})
        assert await gets_job({"kind": "b"})
        changed = await api.call("PATCH", path, json={"filter": {"kind": {"$in": ["a", "c"]}}})
        assert changed.status == 200
        assert (await gets_job({"kind": "a"}), await gets_job({"kind": "b"})) == (True, False)
        assert (await api.call("GET", path)).body["filter"] == {"kind": {"$in": ["a", "c"]}}
        removed = await api.call("PATCH", path, json={"filter": None})
        assert (removed.status, removed.body["filter"]) == (200, None)
        assert await gets_job({"kind": "b"})
        await client.update_webhook(hook["id"], filter={"kind": "z"})
        assert not await gets_job({"kind": "b"})
        assert (await client.get_webhook(hook["id"]))["filter"] == {"kind": "z"}
    finally:
        await api.close()


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"a": 1}
    for _ in range(levels - 1):
        node = {"$not": node}
    return node


#: (filter, the field the 422 names, a word of its reason)
INVALID: list[tuple[Any, str, str]] = [
    ([{"a": 1}], "filter", "object"),
    ({"data.amount": {"$gt": True}}, "filter.data.amount.$gt", "number or string"),
    ({"data.amount": {"$gt": [1]}}, "filter.data.amount.$gt", "number or string"),
    ({"data.amount": {"$regex": "x"}}, "filter.data.amount.$regex", "unknown operator"),
    ({"$where": "1"}, "filter.$where", "not an operator"),
    ({"a": {"$in": "x"}}, "filter.a.$in", "list"),
    ({"a": {"$in": list(range(MAX_IN + 1))}}, "filter.a.$in", "at most"),
    ({"a": {"$in": [{"b": 1}]}}, "filter.a.$in.0", "string, number"),
    ({"a": {"$exists": 1}}, "filter.a.$exists", "true or false"),
    ({"a": {"$not": 5}}, "filter.a.$not", "operators"),
    ({"a": [1, 2]}, "filter.a", "$in"),
    ({"a": {"b": 1}}, "filter.a", "plain value"),
    ({"$and": []}, "filter.$and", "non-empty"),
    ({"$or": [{"a": 1}, 3]}, "filter.$or.1", "filter object"),
    ({"a..b": 1}, "filter.a..b", "empty"),
    ({".".join("p" * 17): 1}, "filter." + ".".join("p" * 17), "steps"),
    ({"a": 2**53 + 1}, "filter.a", "2**53"),
    (_deep(MAX_DEPTH + 1), "filter" + ".$not" * MAX_DEPTH + ".a", "deeper"),
    ({f"k{i}": i for i in range(MAX_NODES + 1)}, f"filter.k{MAX_NODES}", "conditions"),
    ({"a": "x" * MAX_BYTES}, "filter", "bytes"),
]


async def test_an_invalid_filter_is_refused_naming_its_path_and_changes_nothing(
    client: Client, target: Target
) -> None:
    """Create and PATCH refuse each invalid filter with 422 invalid_field naming the path in
    the filter and the reason; the webhook keeps its filter and nothing is created."""
    _app, api = await start_api(client)
    try:
        hook = await client.create_webhook("bad", target.url(), filter={"ok": True})
        for filter_, field, reason in INVALID:
            body = {"tenant_id": "bad", "url": target.url(), "filter": filter_}
            for answer in (
                await api.call("POST", "/v1/webhooks", json=body),
                await api.call("PATCH", f"/v1/webhooks/{hook['id']}", json={"filter": filter_}),
            ):
                assert answer.status == 422, filter_
                error = answer.body["error"]
                assert error["code"] == "invalid_field"
                assert error["message"].startswith(f"{field}: "), error["message"]
                assert reason in error["message"], error["message"]
            with pytest.raises(InvalidField) as raised:
                await client.create_webhook("bad", target.url(), filter=filter_)
            assert raised.value.field == field
        assert [h["id"] for h in (await client.list_webhooks("bad"))["items"]] == [hook["id"]]
        assert (await client.get_webhook(hook["id"]))["filter"] == {"ok": True}
    finally:
        await api.close()


async def test_filters_at_their_bounds_are_accepted(client: Client, target: Target) -> None:
    """A filter at each bound (depth, conditions, $in length) is accepted and evaluated."""
    deep = await client.create_webhook("edge", target.url(), filter=_deep(MAX_DEPTH))
    wide = await client.create_webhook(
        "edge", target.url(), filter={"a": {"$in": list(range(MAX_IN))}}
    )
    many = await client.create_webhook(
        "edge", target.url(), filter={f"k{i}": {"$exists": False} for i in range(MAX_NODES // 2)}
    )
    got = {job["webhook_id"] for job in (await client.publish("edge", EVENT, {"a": 1}))["jobs"]}
    assert got == {wide["id"], many["id"]} | ({deep["id"]} if MAX_DEPTH % 2 else set())


async def test_filtered_webhooks_across_shards(client: Client, target: Target) -> None:
    """With three shards, each shard's filtered webhooks get jobs by their own filter and the
    answer lists exactly those, from every shard."""
    await client.store.adopt_layout(3)
    hooks = await hooks_in_every_shard(client, target, 3, per_shard=2)
    wanted = {next(h["id"] for h in hooks if shard_of(h["id"]) == k) for k in range(3)}
    for hook in hooks:  # in each shard, one webhook takes n = 0 and the others do not
        await client.update_webhook(
            hook["id"], filter={"n": {"$gte": 0 if hook["id"] in wanted else 1}}
        )
    answer = await client.publish("acme", EVENT, {"n": 0})
    got = {job["webhook_id"] for job in answer["jobs"]}
    assert (got, answer["matched"]) == (wanted, len(wanted))
    assert {shard_of(h) for h in got} == {0, 1, 2}
    everyone = await client.publish("acme", EVENT, {"n": 1})
    assert everyone["matched"] == len(hooks)


async def test_a_route_written_before_filters_still_routes(client: Client, target: Target) -> None:
    """A routing entry without a filter field (every route before filters, and every route of
    an unfiltered webhook) routes as before: the route JSON is unchanged."""
    hook = await client.create_webhook("old", target.url(), [EVENT])
    store = client.store.of_webhook(hook["id"])
    route = await store.redis.hget(store.keys.tenant("old"), hook["id"])
    assert route == b'{"e":["order.created"],"on":true,"q":"default"}'
    assert (await client.publish("old", EVENT, {"x": 1}))["matched"] == 1


async def test_an_unfiltered_webhook_is_stored_as_before_filters(
    client: Client, target: Target
) -> None:
    """The record of a webhook without a filter has no filter field, so a process of the
    release before filters (whose Webhook has no such field) still reads it in a rolling
    upgrade; a filter removed by PATCH leaves none either."""
    hook = await client.create_webhook("stored", target.url(), filter={"a": 1})
    store = client.store.of_webhook(hook["id"])
    raw = await store.redis.hget(store.keys.webhooks, hook["id"])
    assert isinstance(raw, bytes)
    assert b'"filter":{"a":1}' in raw
    await client.update_webhook(hook["id"], filter=None)
    raw = await store.redis.hget(store.keys.webhooks, hook["id"])
    assert isinstance(raw, bytes)
    assert b'"filter"' not in raw
    assert (await client.get_webhook(hook["id"]))["filter"] is None
