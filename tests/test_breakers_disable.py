"""Auto-disable (``delivery.disable_after_s``) for webhooks that fail only now and then: the
run of failures outlives the breaker, which is forgotten a minute after its last report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispatcher.model import rfc3339
from dispatcher.queue import breakers
from dispatcher.queue.breakers import Health
from dispatcher.queue.keys import Keys
from tests.helpers import eventually
from tests.target import Reply

if TYPE_CHECKING:
    import pytest
    import redis.asyncio as aioredis

    from dispatcher import Client, shapes
    from dispatcher.queue.store import Store
    from tests.conftest import WorkerHarness
    from tests.target import Target

DISABLE_AFTER_S = 1.0


async def _redis_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _fail(store: Store, webhook_id: str) -> None:
    """A worker's report of one failed attempt."""
    await breakers.report(store, {webhook_id: Health(failed=1, last_error="HTTP 500")}, open_s=30)


async def _succeed(store: Store, webhook_id: str) -> None:
    await breakers.report(store, {webhook_id: Health(ok=1)}, open_s=30)


async def _tick(store: Store) -> breakers.Tick:
    """A breaker tick that forgets every idle closed breaker at once, as a minute without a
    report would."""
    return await breakers.tick(
        store, probe_timeout_s=30, disable_after_s=DISABLE_AFTER_S, forget_idle_ms=0
    )


async def _forgotten(store: Store, redis: aioredis.Redis, webhook_id: str) -> None:
    assert not (await _tick(store)).to_disable
    assert not await redis.hexists(store.keys.breakers, webhook_id)


async def _past(redis: aioredis.Redis, since_ms: int) -> None:
    """Wait until the Redis clock is DISABLE_AFTER_S past ``since_ms``."""
    due_ms = since_ms + int(DISABLE_AFTER_S * 1000)
    await eventually(lambda: _is_past(redis, due_ms), what="the Redis clock past the limit")


async def _is_past(redis: aioredis.Redis, due_ms: int) -> bool:
    return await _redis_ms(redis) >= due_ms


async def _failing_since(client: Client, webhook_id: str) -> Any:
    return (await client.get_webhook(webhook_id))["failing_since"]


async def test_failures_further_apart_than_the_breakers_memory_still_disable(
    client: Client, redis: aioredis.Redis
) -> None:
    """A webhook whose failures come more than a minute apart (its breaker forgotten between
    them) is disabled once disable_after_s has passed since its first failure."""
    hook = await client.create_webhook("acme", "https://example.com/hook")
    store = client.store.of_webhook(hook["id"])
    before = await _redis_ms(redis)
    await _fail(store, hook["id"])
    first = int(await redis.hget(store.keys.failing, hook["id"]) or 0)
    assert first >= before
    await _forgotten(store, redis, hook["id"])
    since = rfc3339(first)
    view = await client.get_webhook(hook["id"])
    assert (view["breaker"], view["failing_since"]) == (None, since)  # kept on the webhook

    await _past(redis, first)
    await _fail(store, hook["id"])
    breaker = (await client.get_webhook(hook["id"]))["breaker"]
    assert breaker is not None
    assert breaker["failing_since"] == since
    done = await _tick(store)
    assert done.to_disable == [(hook["id"], first, "HTTP 500")]


async def test_a_success_between_failures_starts_the_run_again(
    client: Client, redis: aioredis.Redis
) -> None:
    """A success between two sparse failures ends the run: the webhook is not disabled, and
    it fails since the later failure."""
    hook = await client.create_webhook("acme", "https://example.com/hook")
    store = client.store.of_webhook(hook["id"])
    await _fail(store, hook["id"])
    first = int(await redis.hget(store.keys.failing, hook["id"]) or 0)
    await _forgotten(store, redis, hook["id"])
    await _succeed(store, hook["id"])
    assert await _failing_since(client, hook["id"]) is None
    await _forgotten(store, redis, hook["id"])

    await _past(redis, first)
    await _fail(store, hook["id"])
    assert not (await _tick(store)).to_disable
    later = int(await redis.hget(store.keys.failing, hook["id"]) or 0)
    assert later > first
    assert await _failing_since(client, hook["id"]) == rfc3339(later)


async def test_enabling_or_deleting_a_webhook_forgets_its_failures(
    client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """Enabling a disabled webhook gives it a fresh start, and a deleted webhook leaves no
    run of failures behind."""
    hook = await client.create_webhook("acme", "https://example.com/hook")
    store = client.store.of_webhook(hook["id"])
    await _fail(store, hook["id"])
    await client.update_webhook(hook["id"], enabled=False)
    assert await _failing_since(client, hook["id"]) is not None  # shown while disabled
    enabled = await client.update_webhook(hook["id"], enabled=True)
    assert enabled["failing_since"] is None
    assert not await redis.hexists(store.keys.failing, hook["id"])

    await _fail(store, hook["id"])
    await client.delete_webhook(hook["id"])
    assert not await redis.exists(Keys(prefix).failing)
    await _fail(store, hook["id"])  # a worker's late report, after the delete
    await _tick(store)
    assert not await redis.exists(Keys(prefix).failing, Keys(prefix).breakers)


async def test_a_worker_disables_a_webhook_failing_now_and_then(
    client: Client,
    workers: WorkerHarness,
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker disables an endpoint that only ever fails, even when its breaker is forgotten
    between every two attempts (as a minute between attempts does)."""
    monkeypatch.setattr(breakers, "FORGET_IDLE_MS", 0)
    target.script("/down", Reply(500))
    hook = await client.create_webhook("acme", target.url("/down"))
    await client.publish("acme", "order.created", {"n": 1})
    await workers.start(max_attempts=100, backoff_base_s=0.2, backoff_cap_s=0.5, disable_after_s=2)
    disabled = await eventually(lambda: _disabled(client, hook["id"]), timeout_s=20)
    assert disabled["disabled_reason"].startswith("no successful delivery since ")
    assert disabled["failing_since"] is not None
    assert target.count("/down") >= 2


async def _disabled(client: Client, webhook_id: str) -> shapes.Webhook | None:
    hook = await client.get_webhook(webhook_id)
    return None if hook["enabled"] else hook


async def test_a_success_after_the_breaker_was_forgotten_ends_the_run(
    client: Client,
    workers: WorkerHarness,
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A webhook that failed once and answers 200 after its breaker was forgotten is healthy
    again: its run of failures ends (before: the worker reported successes only for webhooks
    with a breaker, so the run went on and a failure days later disabled a healthy webhook)."""
    monkeypatch.setattr(breakers, "FORGET_IDLE_MS", 0)
    target.script("/flaky", Reply(500), Reply(200))
    hook = await client.create_webhook("acme", target.url("/flaky"))
    await workers.start(max_attempts=1)
    await client.publish("acme", "order.created", {"n": 1})
    failing = await eventually(lambda: _failing_since_of(client, hook["id"]), timeout_s=10)
    assert failing is not None
    await eventually(lambda: _breaker_forgotten(client, hook["id"]), timeout_s=10)
    await client.publish("acme", "order.created", {"n": 2})
    await target.wait_for(2, "/flaky")
    await eventually(
        lambda: _run_ended(client, hook["id"]), timeout_s=10, what="failing_since cleared"
    )
    assert (await client.get_webhook(hook["id"]))["enabled"]


async def _failing_since_of(client: Client, webhook_id: str) -> str | None:
    since: str | None = (await client.get_webhook(webhook_id))["failing_since"]
    return since


async def _breaker_forgotten(client: Client, webhook_id: str) -> bool:
    return (await client.get_webhook(webhook_id)).get("breaker") is None


async def _run_ended(client: Client, webhook_id: str) -> bool:
    return (await client.get_webhook(webhook_id))["failing_since"] is None


async def test_a_paused_webhook_is_not_disabled_for_the_failures_before_its_pause(
    client: Client, redis: aioredis.Redis
) -> None:
    """A webhook paused during a run of failures keeps its held events: the run does not age
    while it is paused (no attempt can succeed), so no tick during or right after the pause
    disables it."""
    hook = await client.create_webhook("acme", "https://example.com/hook")
    store = client.store.of_webhook(hook["id"])
    await _fail(store, hook["id"])
    first = int(await redis.hget(store.keys.failing, hook["id"]) or 0)
    await client.update_webhook(hook["id"], paused=True)
    await _past(redis, first)
    await _fail(store, hook["id"])  # the breaker is open as the pause goes on
    assert not (await _tick(store)).to_disable
    await client.update_webhook(hook["id"], paused=False)
    assert not (await _tick(store)).to_disable  # a fresh run from the resume
    view = await client.get_webhook(hook["id"])
    assert view["enabled"] is True
    assert view["failing_since"] is not None
