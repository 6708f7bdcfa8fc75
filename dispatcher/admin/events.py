"""``POST /v1/events`` (fan-out) and ``POST /v1/webhooks/{id}/deliveries`` (one webhook).

A new event answers 202, ``matched`` saying how many webhooks it went to (0 is still a 202);
a repeated idempotency key answers 200 with the first answer, or 422 ``idempotency_key_reused``
when the first use of the key was another request. An event identical to one accepted within
its dedup window answers 200 with that one's answer and ``"deduplicated": true`` (counted in
``dispatcher_events_deduplicated_total``). None of these enqueues anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.admin import bodies
from dispatcher.admin.shared import CLIENT, METRICS, json_response

if TYPE_CHECKING:
    from aiohttp import web


async def publish(request: web.Request) -> web.Response:
    event = bodies.event(await bodies.json_object(request), with_tenant=True)
    new, answer = await request.app[CLIENT].publish_checked(
        event.pop("tenant_id"), event.pop("event_type"), event.pop("payload"), **event
    )
    if answer["deduplicated"]:
        request.app[METRICS].inc("dispatcher_events_deduplicated_total")
    return json_response(answer, 202 if new else 200)


async def deliver(request: web.Request) -> web.Response:
    event = bodies.event(await bodies.json_object(request), with_tenant=False)
    new, answer = await request.app[CLIENT].deliver(
        request.match_info["id"], event.pop("event_type"), event.pop("payload"), **event
    )
    return json_response(answer, 202 if new else 200)
