"""Webhook records: create, read, list, change (compare-and-set), rotate, disable, delete, and
the webhooks as users see them (with their breakers).

With regions (docs/regions.md) every region holds every webhook: each write here also gets a
version (``versions``) and goes on this region's ``registry`` stream in the same step, for the
other regions' replicators (``queue/registry.py``). What a write sets in motion (a breaker
reset, held jobs put back) happens only in the webhook's own region: ``after_change``.
"""

from __future__ import annotations

import asyncio
import copy
from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

from dispatcher.errors import Conflict, NotFound, RegionUnavailable
from dispatcher.ids import is_webhook_id
from dispatcher.model import Webhook, check_region_known, rfc3339
from dispatcher.queue import breakers, encryption, pauses
from dispatcher.queue.records import redis_errors
from dispatcher.queue.regions import reaching
from dispatcher.signing import generate_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from dispatcher.queue.regions import Regions
    from dispatcher.queue.store import Layout, Store

#: How many times a webhook change reads again after another change got in first.
MAX_CHANGE_ATTEMPTS = 32
#: How long a view waits for another region's breakers of its webhooks (then shows none).
REMOTE_VIEW_TIMEOUT_S = 1.0

# redis-py types its replies loosely (bytes or str, and in 5.x "awaitable or not"). Our
# connections have decode_responses off, so each read below casts to the bytes it gets.


def is_home(hook: Webhook, layout: Layout) -> bool:
    """The webhook is this Redis's region's (a record without ``region`` is: it was written
    before regions, in the Redis of its region)."""
    return hook.region is None or hook.region == layout.region


async def save_webhook(store: Store, hook: Webhook) -> None:
    """Write a new webhook (its id is new, so nothing can race this); changes of an existing
    one go through ``_change_webhook``. With regions, its first version (Redis time: no
    version before it) and its registry entry go in the same MULTI."""
    await encryption.guard(store)
    with redis_errors():
        region = (await store.read_layout()).region
        now_ms = (await store.refresh_clock()).now_ms() if region else 0
    store = store.of_webhook(hook.id)
    record = hook.encode(store.keyring)
    pipe = store.redis.pipeline(transaction=True)
    # mapping=: the same HSET key field value, but redis-py 5.x types a plain value as str.
    pipe.hset(store.keys.webhooks, mapping={hook.id: record})
    pipe.hset(store.keys.tenant(hook.tenant_id), mapping={hook.id: hook.routing()})
    pipe.sadd(store.keys.queues, hook.queue)  # the queues webhooks name (control.ensure_known)
    pipe.incr(store.keys.queues_indexed)  # the webhooks ``queues`` covers, kept in step
    if region:
        pipe.hset(store.keys.versions, mapping={hook.id: f"{now_ms} {region}"})
        entry = {"w": hook.id, "v": now_ms, "o": region, "rec": record}
        pipe.xadd(store.keys.registry, cast("dict[Any, Any]", entry))
    with redis_errors():
        await pipe.execute()


async def create_webhook(store: Store, fields: dict[str, Any]) -> Webhook:
    """A new webhook; with regions, of ``region`` (default: this Redis's), one of the
    deployment's (422 otherwise; without regions, any region is)."""
    with redis_errors():
        layout = await store.read_layout()
    hook = Webhook.create(fields, now_ms=store.clock.now_ms(), shards=layout.shards)
    _place(hook, layout)
    await save_webhook(store, hook)
    return hook


def _place(hook: Webhook, layout: Layout) -> None:
    """``hook.region`` checked against the deployment's regions; none: this Redis's region."""
    if hook.region is None:
        hook.region = layout.region
    if hook.region is not None:
        check_region_known(hook.region, layout.regions)


async def get_webhook(store: Store, webhook_id: str) -> Webhook:
    return Webhook.decode(await _read_webhook(store, webhook_id), store.keyring)


async def _read_webhook(store: Store, webhook_id: str) -> bytes:
    """The webhook's record as stored (``NotFound`` when there is none)."""
    if not is_webhook_id(webhook_id):
        raise NotFound(f"no webhook {webhook_id!r}")
    store = store.of_webhook(webhook_id)
    with redis_errors():
        raw = await cast(
            "Awaitable[bytes | None]", store.redis.hget(store.keys.webhooks, webhook_id)
        )
    if raw is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    return raw


async def list_webhooks(store: Store, tenant_id: str) -> list[Webhook]:
    """The tenant's webhooks from every shard, by id."""
    hooks: list[Webhook] = []
    with redis_errors():
        for shard in await store.all_shards():
            ids = await cast(
                "Awaitable[list[bytes]]", shard.redis.hkeys(shard.keys.tenant(tenant_id))
            )
            if ids:
                raws = await cast(
                    "Awaitable[list[bytes | None]]", shard.redis.hmget(shard.keys.webhooks, ids)
                )
                hooks += [Webhook.decode(raw, store.keyring) for raw in raws if raw]
    return sorted(hooks, key=lambda hook: hook.id)


#: The largest page of ``page_webhooks`` (``GET /v1/webhooks`` without a tenant).
MAX_PAGE = 100
#: HSCAN calls one ``page_webhooks`` makes at most (bounded work: a page may come back short
#: with a cursor when a hash's scan hits empty buckets, or shards are empty).
MAX_SCAN_CALLS = 16


def is_page_cursor(value: object) -> bool:
    """A ``next_cursor`` of ``page_webhooks``: ``<shard>:<HSCAN cursor>:<last id>``."""
    if not isinstance(value, str):
        return False
    parts = value.split(":")
    return (
        len(parts) == 3  # noqa: PLR2004 - shard, HSCAN cursor, the last webhook id answered
        and all(
            p.isdigit() and len(p) <= 20 and int(p) < 2**64  # noqa: PLR2004 - Redis's 64 bits
            for p in parts[:2]
        )
        # "" (a step's start), a webhook id, or digits (a cursor of the version before: the
        # step is read again from its start, as HSCAN may repeat a webhook)
        and (parts[2] == "" or parts[2].isdigit() or is_webhook_id(parts[2]))
    )


async def page_webhooks(
    store: Store, *, limit: int, cursor: str | None = None
) -> tuple[list[Webhook], str | None]:
    """A page of every tenant's webhooks, shard by shard in HSCAN order (no set order), and
    the cursor of the next page (None at the end): ``<shard>:<HSCAN cursor>:<last id>``, where
    ``last id`` is the last webhook answered of that scan step, whose webhooks are answered in
    id order (so a webhook deleted meanwhile shifts none of the others out of the page).

    At most ``MAX_SCAN_CALLS`` HSCANs of ``COUNT MAX_PAGE`` each; only the webhooks answered
    are decoded. As with HSCAN, a webhook present from the first page to the last is listed at
    least once; one created or deleted meanwhile may be missed, and one may come twice.
    """
    shard_part, scan_part, last = (cursor or "0:0:").split(":")
    number, scan = int(shard_part), int(scan_part)
    last = "" if last.isdigit() else last
    with redis_errors():
        served = (await store.read_layout()).served
    raws: list[bytes] = []
    calls = 0
    while number < served and len(raws) < limit and calls < MAX_SCAN_CALLS:
        shard = store.shard(number)
        with redis_errors():
            after, batch = await cast(
                "Awaitable[tuple[int, dict[bytes, bytes]]]",
                # COUNT is the same for every page size, so a step is the same for a cursor
                # taken with one limit and followed with another
                shard.redis.hscan(shard.keys.webhooks, scan, count=MAX_PAGE),
            )
        calls += 1
        since = last.encode()
        step = sorted((key, value) for key, value in batch.items() if key > since)
        room = limit - len(raws)
        if len(step) > room:  # the rest of this step on the next page
            raws += [value for _key, value in step[:room]]
            last = step[room - 1][0].decode()
            break
        raws += [value for _key, value in step]
        number, scan, last = (number + 1, 0, "") if int(after) == 0 else (number, int(after), "")
    hooks = [Webhook.decode(raw, store.keyring) for raw in raws]
    return hooks, (f"{number}:{scan}:{last}" if number < served else None)


async def _change_webhook(
    store: Store,
    webhook_id: str,
    change: Callable[[Webhook, int], bool],
    *,
    fresh_start: bool = False,
) -> Webhook:
    """Read the webhook, let ``change(hook, now_ms)`` modify it (False: nothing to write) and
    write it back with ``change_webhook.lua``, only if nobody changed it since the read.
    ``fresh_start``: an operator enabled it, which its own region acts on (``after_change``;
    with regions the registry entry says so, for a webhook of another region).

    Otherwise read and change it again, so concurrent changes (a 410's auto-disable racing a
    rotation, say) all survive. Each failed try means another change got in, so this ends;
    ``Conflict`` after ``MAX_CHANGE_ATTEMPTS`` tries. Policy (validation, the rotation's
    rules) stays in Python, where ``Webhook`` has it; the script only compares and writes.
    """
    store = store.of_webhook(webhook_id)
    await encryption.guard(store)
    with redis_errors():
        clock = await store.refresh_clock()
        region = (await store.read_layout()).region
    # with regions: the version and the registry entry, in the same script
    versioned = [store.keys.versions, store.keys.registry] if region else []
    for _ in range(MAX_CHANGE_ATTEMPTS):
        raw = await _read_webhook(store, webhook_id)
        hook = Webhook.decode(raw, store.keyring)
        old_tenant = hook.tenant_id
        if not change(hook, clock.now_ms()):
            return hook
        if region and hook.region is None:  # a record from before regions: this region's
            hook.region = region
        keys = store.keys
        with redis_errors():
            written = await store.scripts.change_webhook(
                keys=[
                    keys.webhooks,
                    keys.tenant(old_tenant),
                    keys.tenant(hook.tenant_id),
                    keys.queues,
                    *versioned,
                ],
                args=[
                    *(webhook_id, raw, hook.encode(store.keyring), hook.routing(), hook.queue),
                    *([region, "1" if fresh_start else ""] if region else []),
                ],
            )
        if written:
            return hook
    raise Conflict(f"webhook {webhook_id} kept changing while this change was made; try again")


async def update_webhook(store: Store, webhook_id: str, changes: dict[str, Any]) -> Webhook:
    with redis_errors():
        layout = await store.read_layout()
    if "region" in changes:  # one of the deployment's; null: this Redis's region
        if changes["region"] is None:
            changes = {**changes, "region": layout.region}
        if changes["region"] is not None:
            check_region_known(changes["region"], layout.regions)
    before: list[Webhook] = []

    def update(hook: Webhook, now_ms: int) -> bool:
        before[:] = [copy.copy(hook)]
        was_paused = hook.paused
        hook.apply(changes)
        hook.updated_at_ms = now_ms
        if was_paused and not hook.paused and is_home(hook, layout):
            hook.draining = 1  # until its held jobs are back in their queues (pauses.py)
        return True

    fresh_start = changes.get("enabled") is True
    hook = await _change_webhook(store, webhook_id, update, fresh_start=fresh_start)
    await after_change(store, before[0], hook, changes=changes)
    return hook


async def after_change(
    store: Store,
    old: Webhook | None,
    new: Webhook | None,
    *,
    changes: dict[str, Any] | None,
    fresh_start: bool = False,
) -> None:
    """What a webhook's change (``old`` to ``new``; None: created, deleted) sets in motion, in
    its own region only (``new``'s, or ``old``'s for a delete; another region holds none of its
    jobs): called after a PATCH made here (``changes``: the PATCH) and by the replicator after
    applying another region's write (``changes`` None: judged from ``old`` and ``new``, and
    ``fresh_start`` when that write enabled it: a PATCH ``enabled: true`` closes the breaker
    even of a webhook that was enabled already)."""
    hook = new or old
    if old is None or hook is None or not is_home(hook, store.layout):
        return
    webhook_id = hook.id
    if new is None:  # deleted: its held jobs go, to be dead-lettered by its gate
        if changes is None:  # written elsewhere: what delete_webhook.lua clears here
            await _forget(store.of_webhook(webhook_id), webhook_id)
        await pauses.to_release(store, webhook_id)
        return
    if changes is None:
        changes = {}
        if new.enabled != old.enabled or (fresh_start and new.enabled):
            changes["enabled"] = new.enabled
        if old.paused and not new.paused:
            changes["paused"] = False
    if changes.get("enabled") is True:
        # An operator (re-)enabling a webhook asks for a fresh start: forget its breaker, so
        # its parked jobs go back to their queues and the next job goes straight out.
        with redis_errors():
            await breakers.reset(store.of_webhook(webhook_id), webhook_id)
    if changes.get("paused") is False or changes.get("enabled") is False:
        # disabled: its held jobs go back to their queues now (resumed: at the tick, in order)
        await pauses.resume(store, webhook_id, put_back=changes.get("enabled") is False)


async def _forget(store: Store, webhook_id: str) -> None:
    """A deleted webhook's rate-limit state, leases and run of failures (as delete_webhook.lua
    clears them, for a delete made in another region)."""
    keys = store.keys
    pipe = store.redis.pipeline(transaction=True)
    pipe.hdel(keys.rates, webhook_id)
    pipe.delete(keys.lease(webhook_id))
    pipe.hdel(keys.failing, webhook_id)
    with redis_errors():
        await pipe.execute()


async def disable_webhook(store: Store, webhook_id: str, reason: str) -> None:
    """Disable the webhook (a 410, or no success for too long); a disabled one keeps the
    reason it was disabled for, and a deleted one stays deleted."""
    await _disable(store, webhook_id, reason, only_own=False)


async def disable_failing(store: Store, webhook_id: str, reason: str) -> bool:
    """Disable the webhook for failing too long, unless it is another region's (moved out of
    this one: the failures seen from here say nothing of its own region's deliveries); True
    when this call disabled it."""
    return await _disable(store, webhook_id, reason, only_own=True)


async def _disable(store: Store, webhook_id: str, reason: str, *, only_own: bool) -> bool:
    with redis_errors():
        layout = await store.read_layout()
    disabled = False

    def disable(hook: Webhook, now_ms: int) -> bool:
        nonlocal disabled
        disabled = hook.enabled and (not only_own or is_home(hook, layout))
        if disabled:
            hook.enabled = False
            hook.disabled_reason = reason
            hook.updated_at_ms = now_ms
        return disabled

    with suppress(NotFound):
        hook = await _change_webhook(store, webhook_id, disable)
        if hook.paused and not hook.enabled:  # its held jobs are dead-lettered (pauses.py)
            await pauses.to_release(store, webhook_id)
        if only_own and not is_home(hook, layout):
            # what this region kept of it: its tick would list it again each second
            with redis_errors():
                await breakers.reset(store.of_webhook(webhook_id), webhook_id)
    return disabled


async def rotate_secret(
    store: Store,
    webhook_id: str,
    new_secret: str | None,
    grace_s: float,
    scheme: str | None = None,
) -> Webhook:
    """``new_secret`` (None: a key generated for ``scheme``, or for the webhook's own one)
    becomes the webhook's, the old one signing beside it until ``grace_s`` has passed: a
    change of scheme (v1 to v1a, say) is a rotation too."""

    def rotate(hook: Webhook, now_ms: int) -> bool:
        until_ms = now_ms + int(grace_s * 1000)
        live = [[s, until] for s, until in hook.old_secrets if until > now_ms]
        hook.old_secrets = [*live, [hook.secret, until_ms]] if grace_s > 0 else live
        hook.apply({"secret": new_secret or generate_key(scheme or hook.signature_scheme)})
        hook.updated_at_ms = now_ms
        return True

    return await _change_webhook(store, webhook_id, rotate)


async def reseal(store: Store, webhook_id: str) -> bool:
    """Write the webhook again as it is, its secrets sealed with the store's first key
    (``dispatcher rekey``); ``updated_at`` stays, and a record no key opens is left alone
    (False: it was not written, sealed meanwhile with a key the store lacks)."""
    hook = await _change_webhook(store, webhook_id, lambda hook, _now_ms: hook.sealed is None)
    return hook.sealed is None


async def delete_webhook(store: Store, webhook_id: str) -> None:
    """Delete the webhook, its routing entry, rate-limit state, leases and run of failures
    (``NotFound`` when
    there is none); compare-and-set like ``_change_webhook``, so a concurrent change of its
    tenant cannot leave a routing entry behind."""
    store = store.of_webhook(webhook_id)
    keys = store.keys
    with redis_errors():
        region = (await store.read_layout()).region
    # with regions: the tombstone version and the registry entry, in the same script
    versioned = [keys.versions, keys.registry] if region else []
    for _ in range(MAX_CHANGE_ATTEMPTS):
        raw = await _read_webhook(store, webhook_id)
        hook = Webhook.decode(raw)
        tenant = keys.tenant(hook.tenant_id)
        with redis_errors():
            deleted = await store.scripts.delete_webhook(
                keys=[
                    *(keys.webhooks, tenant, keys.rates, keys.lease(webhook_id), keys.failing),
                    keys.queues_indexed,
                    *versioned,
                ],
                args=[webhook_id, raw, *([region] if region else [])],
            )
        if deleted:
            # its held jobs, if any (pauses.py)
            await after_change(store, hook, None, changes={})
            return
    raise Conflict(f"webhook {webhook_id} kept changing while it was deleted; try again")


async def ensure_deliverable(store: Store, webhook_id: str) -> Webhook:
    hook = await get_webhook(store, webhook_id)
    if not hook.enabled:
        raise Conflict(f"webhook {webhook_id} is disabled")
    return hook


async def webhook_views(
    store: Store, hooks: list[Webhook], regions: Regions | None = None
) -> list[dict[str, Any]]:
    """Webhooks as users see them, each with its breaker (null while it never tripped) and
    since when it fails without a success (null when it does not). With ``regions``, those
    of another region's webhook are read from that region's Redis, whose daemons deliver it
    (null when that region does not answer)."""
    ids = [h.id for h in hooks]
    with redis_errors():
        found = await breakers.states(store, ids)
        failing = await breakers.failing_since(store, ids)
        home = (await store.read_layout()).region
    if regions is not None and home is not None:
        elsewhere: dict[str, list[str]] = {}
        for hook in hooks:
            if hook.region is not None and hook.region != home:
                elsewhere.setdefault(hook.region, []).append(hook.id)
        for region, there in elsewhere.items():
            for webhook_id in there:  # what this region may hold of it is not its state
                found.pop(webhook_id, None)
                failing.pop(webhook_id, None)
            with suppress(RegionUnavailable, TimeoutError), reaching(region):
                remote = regions.store(region)
                async with asyncio.timeout(REMOTE_VIEW_TIMEOUT_S):
                    found |= await breakers.states(remote, there)
                    failing |= await breakers.failing_since(remote, there)
    views = []
    for hook in hooks:
        breaker = found.get(hook.id)
        views.append(
            {
                **hook.to_wire(),
                "region": hook.region or home,  # a record from before regions: this one's
                "breaker": breaker.to_wire() if breaker else None,
                "failing_since": rfc3339(failing.get(hook.id)),
            }
        )
    return views
