"""Keys that user-chosen parts cannot make collide, webhook changes that never undo each other,
and a Client/admin clock that follows Redis TIME whatever the host's clock says."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest

from dispatcher import Client, shapes
from dispatcher.errors import ConfirmationRequired, NotFound
from dispatcher.model import Webhook
from dispatcher.queue import webhooks
from dispatcher.queue.keys import Keys
from tests.admin_api import start_api
from tests.helpers import eventually, stream_entries
from tests.target import Reply, Target

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import redis.asyncio as aioredis

    from tests.conftest import WorkerHarness

HOUR_MS = 3_600_000


# --- idempotency keys between tenants --------------------------------------------------------

# Tenant "org:1" with key "k" and tenant "org" with key "1:k" were both "idem:org:1:k".
COLLIDING = (("org:1", "k"), ("org", "1:k"))


async def _two_tenants(client: Client, target: Target) -> dict[str, str]:
    """A webhook for each colliding tenant: webhook id by tenant id."""
    return {
        tenant: (await client.create_webhook(tenant, target.url(f"/{n}")))["id"]
        for n, (tenant, _key) in enumerate(COLLIDING)
    }


async def _assert_own_jobs(
    client: Client, hooks: dict[str, str], answers: dict[str, shapes.PublishAnswer]
) -> None:
    """Each tenant's answer names its own new event and one job for its own webhook, stored
    with its own tenant id."""
    assert answers[COLLIDING[0][0]]["event_id"] != answers[COLLIDING[1][0]]["event_id"]
    for tenant, answer in answers.items():
        [job] = answer["jobs"]
        assert job["webhook_id"] == hooks[tenant]
        stored = await client.get_job(job["id"])
        assert stored is not None
        assert (stored["tenant_id"], stored["webhook_id"], stored["state"]) == (
            tenant,
            hooks[tenant],
            "queued",
        )


async def test_idempotency_keys_of_tenants_never_collide_in_publish(
    client: Client, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """Tenants 'org:1' with key 'k' and 'org' with key '1:k' each get their own event enqueued."""
    hooks = await _two_tenants(client, target)
    answers: dict[str, shapes.PublishAnswer] = {}
    for tenant, key in COLLIDING:
        new, answers[tenant] = await client.publish_checked(
            tenant, "a.b", {"t": tenant}, idempotency_key=key
        )
        assert new, f"{tenant}'s event was taken for a repeat of the other tenant's"
    await _assert_own_jobs(client, hooks, answers)
    assert await redis.xlen(Keys(prefix).ready("default")) == 2
    # Each key still answers its own first answer.
    for tenant, key in COLLIDING:
        again = await client.publish(tenant, "a.b", {"t": tenant}, idempotency_key=key)
        assert again == answers[tenant]


async def test_idempotency_keys_of_tenants_never_collide_over_http(
    client: Client, target: Target
) -> None:
    """POST /v1/events answers 202 with its own event for each of two colliding tenant/key pairs."""
    hooks = await _two_tenants(client, target)
    _app, api = await start_api(client)
    try:
        answers = {}
        for tenant, key in COLLIDING:
            body = {"tenant_id": tenant, "event_type": "a.b", "payload": {}, "idempotency_key": key}
            answer = await api.call("POST", "/v1/events", json=body)
            assert answer.status == 202, answer.body
            answers[tenant] = answer.body
            repeat = await api.call("POST", "/v1/events", json=body)
            assert (repeat.status, repeat.body) == (200, answer.body)
    finally:
        await api.close()
    await _assert_own_jobs(client, hooks, answers)


def test_key_names_are_unambiguous() -> None:
    """Different tenant/key pairs, tenants or queues never share a key name."""
    keys = Keys("p")
    pairs = [("a:b", "c"), ("a", "b:c"), ("a:b:c", ""), ("", "a:b:c"), ("3:a", "b"), ("3", "a:b")]
    assert len({keys.idempotency(t, k) for t, k in pairs}) == len(pairs)
    tenants = ["a", "a:b", "a:", "{x}", "1:a"]
    assert len({keys.tenant(t) for t in tenants}) == len(tenants)
    # Every family is named apart, so no name of one can be a name of another.
    assert keys.tenant("x").startswith("p:{0}:tenant:")
    assert keys.idempotency("x", "k").startswith("p:{0}:idempotency:1:x:")


# --- webhook changes that race --------------------------------------------------------------


async def _stored(redis: aioredis.Redis, prefix: str, webhook_id: str) -> Webhook:
    raw = await cast("Awaitable[bytes | None]", redis.hget(Keys(prefix).webhooks, webhook_id))
    assert raw is not None
    return Webhook.decode(raw)


async def _warm(client: Client, connections: int = 24) -> None:
    """Open connections enough for every racing task: each then sends its first read as soon
    as it starts, so all the reads go out before any write (none waits for a connect)."""
    await asyncio.gather(*(client.ping() for _ in range(connections)))


async def _routes(redis: aioredis.Redis, prefix: str, tenant: str) -> dict[str, Any]:
    raw = await cast("Awaitable[dict[bytes, bytes]]", redis.hgetall(Keys(prefix).tenant(tenant)))
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


async def test_rotation_disable_and_update_racing_all_survive(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A rotation, a 410's auto-disable and a PATCH that read the same webhook all take effect."""
    hook = await client.create_webhook("acme", "https://example.com/h")
    store = client.store
    await _warm(client)
    # All three read the webhook before any writes (each is one task; their reads go out
    # before the first write): the old read-modify-write kept only the last writer's view.
    rotated, _, updated = await asyncio.gather(
        webhooks.rotate_secret(store, hook["id"], "whsec_" + "A" * 32, 3600),
        webhooks.disable_webhook(store, hook["id"], "410 Gone"),
        webhooks.update_webhook(store, hook["id"], {"tenant_id": "globex", "description": "d"}),
    )
    final = await _stored(redis, prefix, hook["id"])
    assert final.secret == rotated.secret == "whsec_" + "A" * 32
    assert [s for s, _until in final.old_secrets] == [hook["secret"]]
    assert (final.enabled, final.disabled_reason) == (False, "410 Gone")
    assert (final.tenant_id, final.description) == ("globex", updated.description)
    # The routing hash says the same: only under the new tenant, and off.
    assert await _routes(redis, prefix, "acme") == {}
    assert await _routes(redis, prefix, "globex") == {hook["id"]: orjson.loads(final.routing())}
    assert (await _routes(redis, prefix, "globex"))[hook["id"]]["on"] is False


async def test_many_racing_changes_lose_nothing(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Many concurrent rotations, PATCHes and a disable of one webhook each leave their mark."""
    hook = await client.create_webhook("acme", "https://example.com/h")
    store = client.store
    await _warm(client)
    rotations = [
        webhooks.rotate_secret(store, hook["id"], "whsec_" + chr(ord("A") + i) * 32, 3600)
        for i in range(12)
    ]
    patches = [
        webhooks.update_webhook(store, hook["id"], {"description": f"d{i}"}) for i in range(6)
    ]
    done = await asyncio.gather(
        *rotations, *patches, webhooks.disable_webhook(store, hook["id"], "410 Gone")
    )
    final = await _stored(redis, prefix, hook["id"])
    new_secrets = {rotated.secret for rotated in done[:12] if isinstance(rotated, Webhook)}
    # Every rotation's secret is the current one or still in its grace, with the original one.
    kept = {final.secret} | {s for s, _until in final.old_secrets}
    assert kept == new_secrets | {hook["secret"]}
    assert len(final.old_secrets) == 12
    assert final.description in {f"d{i}" for i in range(6)}
    assert (final.enabled, final.disabled_reason) == (False, "410 Gone")
    assert (await _routes(redis, prefix, "acme"))[hook["id"]] == orjson.loads(final.routing())


async def test_a_disabled_webhook_keeps_its_first_reason_and_a_deleted_one_stays_deleted(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A second auto-disable changes nothing, and one racing a delete does not bring it back."""
    hook = await client.create_webhook("acme", "https://example.com/h")
    await webhooks.disable_webhook(client.store, hook["id"], "first")
    await webhooks.disable_webhook(client.store, hook["id"], "second")
    assert (await _stored(redis, prefix, hook["id"])).disabled_reason == "first"
    other = await client.create_webhook("acme", "https://example.com/h")
    await _warm(client)
    await asyncio.gather(
        client.delete_webhook(other["id"]),
        webhooks.disable_webhook(client.store, other["id"], "410 Gone"),
    )
    assert await redis.hget(Keys(prefix).webhooks, other["id"]) is None
    assert other["id"] not in await _routes(redis, prefix, "acme")
    with pytest.raises(NotFound):
        await client.update_webhook(other["id"], description="back?")


async def test_delete_racing_a_tenant_change_leaves_no_route(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A webhook deleted while its tenant changes is gone from every tenant's routing."""
    hook = await client.create_webhook("acme", "https://example.com/h")
    await _warm(client)
    await asyncio.gather(
        webhooks.update_webhook(client.store, hook["id"], {"tenant_id": "globex"}),
        client.delete_webhook(hook["id"]),
        return_exceptions=True,  # the update may find it deleted already (NotFound)
    )
    assert await redis.hget(Keys(prefix).webhooks, hook["id"]) is None
    assert await _routes(redis, prefix, "acme") == {}
    assert await _routes(redis, prefix, "globex") == {}


# --- the Client's and the admin's clock -------------------------------------------------------


async def _redis_now_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _host_an_hour_ahead(client: Client) -> None:
    """As if this host's clock were an hour ahead of the Redis server's (before any use)."""
    assert not client.store.clock.synced
    client.store.clock._offset_ms += HOUR_MS  # the skew under test


async def test_deliver_at_follows_redis_time_on_a_skewed_host(
    client: Client, redis: aioredis.Redis
) -> None:
    """An event due in ten minutes by the Redis clock is scheduled, whatever the host's clock."""
    _host_an_hour_ahead(client)
    await client.create_webhook("acme", "https://example.com/h")
    due = datetime.fromtimestamp(await _redis_now_ms(redis) / 1000, UTC) + timedelta(minutes=10)
    [job] = (await client.publish("acme", "a.b", {}, deliver_at=due))["jobs"]
    stored = await client.get_job(job["id"])
    assert stored is not None
    assert stored["state"] == "scheduled"


async def test_rotation_grace_follows_redis_time_on_a_skewed_host(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """A rotated secret's grace ends grace_s after the rotation by the Redis clock."""
    _host_an_hour_ahead(client)
    hook = await client.create_webhook("acme", "https://example.com/h")
    before_ms = await _redis_now_ms(redis)
    await client.rotate_secret(hook["id"], grace_s=60)
    after_ms = await _redis_now_ms(redis)
    [[_old, until_ms]] = (await _stored(redis, prefix, hook["id"])).old_secrets
    assert before_ms + 60_000 - 50 <= until_ms <= after_ms + 60_000 + 50


async def test_dlq_purge_cutoff_follows_redis_time_on_a_skewed_host(
    client: Client, target: Target, workers: WorkerHarness, redis_url: str, prefix: str
) -> None:
    """A dead job a few seconds old is not older than a minute's retention, whatever the host's
    clock."""
    hook = await client.create_webhook("acme", target.url("/gone"))
    target.script("/gone", Reply(410))
    [job] = (await client.publish("acme", "a.b", {}))["jobs"]
    await workers.start()

    async def dead() -> bool:
        found = await client.get_job(job["id"])
        return found is not None and found["state"] == "dead"

    await eventually(dead, what="the job dead")
    assert hook["id"]
    async with Client.from_url(redis_url, prefix=prefix, dlq_retention_s=60) as skewed:
        _host_an_hour_ahead(skewed)
        with pytest.raises(ConfirmationRequired) as counted:
            await skewed.purge_dlq(60)
        assert counted.value.would_purge == 0
        assert len(await stream_entries(skewed.store.redis, Keys(prefix).dlq)) == 1


async def test_clock_is_measured_again_now_and_then_not_per_publish(
    client: Client, redis: aioredis.Redis
) -> None:
    """Publishing asks Redis TIME once per clock.MAX_AGE_S, and a clock gone wrong is set right."""
    await client.create_webhook("acme", "https://example.com/h")

    async def time_calls() -> int:
        stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_time", {}).get("calls", 0))

    before = await time_calls()
    for i in range(100):
        await client.publish("acme", "a.b", {"i": i})
    assert await time_calls() - before <= 2  # one measurement, two if 10 s went by meanwhile
    clock = client.store.clock
    clock._offset_ms += HOUR_MS  # as if the clock had stepped since
    clock.max_age_s = 0.0  # the next publish finds the measurement old
    due = datetime.fromtimestamp(await _redis_now_ms(redis) / 1000, UTC) + timedelta(minutes=10)
    [job] = (await client.publish("acme", "a.b", {}, deliver_at=due))["jobs"]
    stored = await client.get_job(job["id"])
    assert stored is not None
    assert stored["state"] == "scheduled"


async def test_a_webhook_record_with_fields_of_a_newer_release_is_still_delivered(
    client: Client, target: Target, workers: WorkerHarness, redis: aioredis.Redis, prefix: str
) -> None:
    """During a rolling upgrade a newer release may store webhook fields this one does not
    know: the webhook is still read, listed and delivered to, not taken for deleted."""
    hook = await client.create_webhook("acme", target.url("/new"))
    key = Keys(prefix).webhooks
    stored = orjson.loads(cast("bytes", await redis.hget(key, hook["id"])))
    await redis.hset(key, hook["id"], orjson.dumps({**stored, "some_future_field": {"x": 1}}))
    assert (await client.get_webhook(hook["id"]))["id"] == hook["id"]
    [job] = (await client.publish("acme", "a.b", {"n": 1}))["jobs"]
    await workers.start()

    async def delivered() -> bool:
        found = await client.get_job(job["id"])
        return found is not None and found["state"] == "delivered"

    await eventually(delivered, what="the job delivered")
    assert target.count("/new") == 1
