"""A test send: one signed attempt at a webhook now, not queued and not retried, judged.

``Client.test_webhook`` (and ``POST /v1/webhooks/{id}/test`` through it) checks the request
here, takes the webhook's one-per-second slot (``queue/resend.py``), then ``attempt`` POSTs
the body once through a sender (the daemon's own for the API, a short-lived native
``Sender`` for a ``Client`` without one), signed and with the headers a delivery carries
(``delivery.Worker._deliver``), under the sender's deadline (``delivery.timeout_s``), its
address policy (``security.*``) and egress proxy (``delivery.proxy_url``). The answer is
``verdict``'s.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Final

import orjson

from dispatcher.channel import Channels
from dispatcher.delivery import USER_AGENT
from dispatcher.errors import InvalidField, PayloadTooLarge
from dispatcher.model import check_event_type, rfc3339
from dispatcher.sender import Sender
from dispatcher.signing import sign

if TYPE_CHECKING:
    from dispatcher import shapes
    from dispatcher.model import Webhook
    from dispatcher.sender import HttpSender, Outcome
    from dispatcher.ssrf import AddressPolicy

#: The event type of a test send without one.
DEFAULT_EVENT_TYPE: Final = "webhook.test"
#: At most this many bytes of the answer's body are shown (``response_snippet``), decoded as
#: UTF-8 with replacement characters.
SNIPPET_BYTES: Final = 512
#: A test send's ``webhook-id`` starts so, then 24 random hex digits: never a job's id.
MESSAGE_ID_PREFIX: Final = "test_"
RESULTS: Final = ("delivered", "rejected", "failed", "limited")  # the metric's ``result``


def request_body(
    webhook_id: str, event_type: object, payload: object, *, now_ms: int, max_bytes: int
) -> bytes:
    """The body to send: ``payload`` as JSON exactly as given (as a delivery sends a
    published payload), or without one ``{"type", "timestamp", "data": {"webhook_id",
    "test": true}}`` (the Standard Webhooks envelope) with ``event_type`` (default
    ``webhook.test``) as its type. ``InvalidField`` names a bad field."""
    kind = DEFAULT_EVENT_TYPE if event_type is None else check_event_type(event_type)
    if payload is None:
        payload = {
            "type": kind,
            "timestamp": rfc3339(now_ms),
            "data": {"webhook_id": webhook_id, "test": True},
        }
    try:
        body = orjson.dumps(payload)
    except TypeError as exc:
        raise InvalidField("payload", f"must be JSON-serialisable ({exc})") from exc
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"payload is {len(body)} bytes, over the limit of {max_bytes}")
    return body


async def attempt(
    hook: Webhook,
    body: bytes,
    *,
    now_ms: int,
    sender: HttpSender | None,
    policy: AddressPolicy,
    timeout_s: float,
    proxy_url: str | None = None,
    channels: Channels | None = None,
) -> shapes.TestSend:
    """POST ``body`` to ``hook`` once, signed, through ``sender`` (None: a native ``Sender``
    made for this one attempt with ``policy``, ``timeout_s`` and ``proxy_url``) with the
    webhook's channel from ``channels`` (None: built for this attempt), and judge the
    outcome."""
    message_id = MESSAGE_ID_PREFIX + secrets.token_hex(12)
    timestamp_s = now_ms // 1000
    headers = {
        **hook.headers,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": sign(message_id, timestamp_s, body, hook.secrets(now_ms)),
    }
    channel = (channels or Channels()).of(hook)
    if sender is not None:
        outcome = await sender.attempt(
            hook.url, body, headers, keep_body=SNIPPET_BYTES, channel=channel
        )
    else:
        own = Sender(
            timeout_s=timeout_s,
            concurrency=1,
            policy=policy,
            user_agent=USER_AGENT,
            proxy_url=proxy_url,
        )
        async with own:
            outcome = await own.attempt(
                hook.url, body, headers, keep_body=SNIPPET_BYTES, channel=channel
            )
    return verdict(outcome, message_id)


def verdict(outcome: Outcome, message_id: str) -> shapes.TestSend:
    """The answer: ``signature_accepted`` is True for a 2xx, False for any other answer (a
    receiver that checks signatures answers 401 or 403 to a bad one), None without an
    answer (refused address, connection refused, timeout)."""
    status = outcome.status
    return {
        "delivered": outcome.delivered,
        "status": status,
        "duration_ms": round(outcome.duration_ms, 3),
        "error": outcome.error,
        "response_snippet": None
        if status is None
        else outcome.body[:SNIPPET_BYTES].decode("utf-8", errors="replace"),
        "signature_accepted": None if status is None else outcome.delivered,
        "message_id": message_id,
    }


def result_of(answer: shapes.TestSend) -> str:
    """The ``result`` label of ``dispatcher_test_sends_total`` for a test that was sent."""
    if answer["delivered"]:
        return "delivered"
    return "failed" if answer["status"] is None else "rejected"
