"""``/v1/dlq``: list with a cursor, inspect, replay, purge (with confirmation).

Every handler does bounded work: a listing reads at most ``dlq.MAX_SCANNED`` entries and no
payload; a replay of everything matching, or a confirmed purge, does one page of at most
``dlq.PAGE`` DLQ entries inline and answers 200 when that was all, else 202 with a background
operation that does the rest (``GET /v1/operations/{id}``); counting reads entry ids only.
With regions, each acts where ``Client`` does (``Client.dlq_scope``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.admin import bodies
from dispatcher.admin.operations import carry_on
from dispatcher.admin.shared import CLIENT, json_response
from dispatcher.queue import dlq_ops

if TYPE_CHECKING:
    from aiohttp import web


async def list_(request: web.Request) -> web.Response:
    params = bodies.query(
        request, {"limit", "cursor", "webhook_id", "tenant_id", "reason", "since", "until"}
    )
    page = await request.app[CLIENT].list_dlq(
        limit=bodies.whole(params, "limit", 50),
        cursor=params.get("cursor"),
        webhook_id=params.get("webhook_id"),
        tenant_id=params.get("tenant_id"),
        reason=params.get("reason"),
        since=params.get("since"),
        until=params.get("until"),
    )
    return json_response(page)


async def inspect(request: web.Request) -> web.Response:
    return json_response(await request.app[CLIENT].inspect_dlq(request.match_info["id"]))


async def replay(request: web.Request) -> web.Response:
    """By ids: all or nothing (409 ``not_replayable`` names the dead jobs that cannot go back),
    the ids passed over named (``not_found``, ``not_dead``). Everything matching: those that
    cannot go back are skipped and counted by reason."""
    wanted = bodies.replay(await bodies.json_object(request))
    client = request.app[CLIENT]
    if wanted.ids is not None:
        return json_response(await client.replay(wanted.ids))
    plan = await dlq_ops.plan_replay(
        client.store,
        webhook_id=wanted.webhook_id,
        tenant_id=wanted.tenant_id,
        since_ms=wanted.since_ms,
        reason=wanted.reason,
        until_ms=wanted.until_ms,
        regions=client.regions,
        scope=await client.dlq_scope(wanted.webhook_id),
    )
    first = await dlq_ops.replay_step(
        client.store, plan, dlq_ops.Position(), regions=client.regions
    )
    answer = dlq_ops.replay_answer(first)  # Client.replay_matching's answer, for this page
    if first.position is None:
        return json_response(answer)
    return await carry_on(request, "replay", plan, first, answer)


async def purge(request: web.Request) -> web.Response:
    """Unconfirmed: 409 with the Client's ``ConfirmationRequired`` (what would go, what the
    retention keeps). Confirmed: one page inline, the rest in the background."""
    params = bodies.query(request, {"older_than_s", "confirm"})
    older_than_s = bodies.seconds(params, "older_than_s", 0.0)
    confirm = bodies.flag(params, "confirm")
    client = request.app[CLIENT]
    facts = await client.purge_facts(older_than_s)
    if not confirm:
        raise facts.refusal()
    first = await dlq_ops.purge_step(
        client.store, facts.plan, dlq_ops.Position(), regions=client.regions
    )
    answer = facts.answer(first.changed)  # Client.purge_dlq's answer, for this page
    if first.position is None:
        return json_response(answer)
    return await carry_on(request, "purge", facts.plan, first, answer)
