"""``POST /v1/webhooks/{id}/test`` and ``Client.test_webhook``: one signed attempt now, judged."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from dispatcher import Client, TooManyRequests, shapes
from dispatcher.config import SecurityConfig
from dispatcher.metrics import Metrics
from dispatcher.queue.store import Store
from dispatcher.sender import Sender
from dispatcher.ssrf import AddressPolicy
from dispatcher.testsend import SNIPPET_BYTES
from tests.admin_api import Api, start_api
from tests.helpers import eventually, free_port
from tests.target import Hang, Reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.helpers import MakeSender
    from tests.target import Target

LOCAL = SecurityConfig(allow_private_targets=True)


@pytest.fixture
async def daemon_sender() -> AsyncIterator[Sender]:
    """The daemon's sender as the admin API gets it: local targets allowed, a short deadline."""
    async with Sender(
        timeout_s=0.5, concurrency=4, policy=AddressPolicy(allow_private=True), user_agent="t"
    ) as sender:
        yield sender


@pytest.fixture
async def local(redis_url: str, prefix: str, daemon_sender: Sender) -> AsyncIterator[Client]:
    """A Client as the daemon's admin API has it: sending through the daemon's sender."""
    async with Client(Store.open(redis_url, prefix=prefix), sender=daemon_sender) as client:
        yield client


@pytest.fixture
async def api(local: Client) -> AsyncIterator[tuple[Api, Metrics]]:
    metrics = Metrics()
    _app, api = await start_api(local, metrics=metrics)
    yield api, metrics
    await api.close()


async def test_a_test_send_reaches_the_target_once_signed(
    local: Client, api: tuple[Api, Metrics], target: Target
) -> None:
    """The endpoint gets one POST with valid Standard Webhooks headers; the answer says so."""
    http, metrics = api
    hook = await local.create_webhook("acme", target.url(), ["order.paid"])
    target.script("/hook", Reply(204, b""))
    answer = await http.call("POST", f"/v1/webhooks/{hook['id']}/test")
    assert answer.status == 200, answer.text
    verdict = answer.body
    assert verdict["delivered"] is True
    assert (verdict["status"], verdict["error"]) == (204, None)
    assert verdict["signature_accepted"] is True
    assert verdict["response_snippet"] == ""
    assert verdict["duration_ms"] >= 0
    [req] = target.received
    Verifier(hook["secret"]).verify(req.body, dict(req.headers))
    assert req.headers["webhook-id"] == verdict["message_id"]
    assert verdict["message_id"].startswith("test_")
    sent = orjson.loads(req.body)
    assert sent["type"] == "webhook.test"
    assert sent["data"] == {"webhook_id": hook["id"], "test": True}
    assert metrics.get("dispatcher_test_sends_total", result="delivered") == 1


async def test_a_given_payload_is_sent_exactly_as_given(
    local: Client, api: tuple[Api, Metrics], target: Target
) -> None:
    """A body's payload is the request body, as a delivery sends a published payload."""
    http, _ = api
    hook = await local.create_webhook("acme", target.url())
    answer = await http.call(
        "POST",
        f"/v1/webhooks/{hook['id']}/test",
        json={"event_type": "order.paid", "payload": {"order": 42}},
    )
    assert answer.body["delivered"] is True
    assert target.received[0].body == b'{"order":42}'


async def test_a_rejected_signature_is_a_verdict_with_the_answer(
    local: Client, api: tuple[Api, Metrics], target: Target
) -> None:
    """A 401 answers 200 with delivered false, signature_accepted false and the answer's text."""
    http, metrics = api
    hook = await local.create_webhook("acme", target.url())
    target.script("/hook", Reply(401, b"bad signature"))
    verdict = (await http.call("POST", f"/v1/webhooks/{hook['id']}/test")).body
    assert (verdict["delivered"], verdict["status"]) == (False, 401)
    assert verdict["signature_accepted"] is False
    assert verdict["response_snippet"] == "bad signature"
    assert verdict["error"] == "HTTP 401: bad signature"
    assert metrics.get("dispatcher_test_sends_total", result="rejected") == 1


async def test_no_answer_is_a_verdict_without_a_signature_judgement(
    local: Client, api: tuple[Api, Metrics], target: Target
) -> None:
    """A refused connection and a timeout answer 200 with status and signature_accepted null."""
    http, metrics = api
    refused = await local.create_webhook("acme", f"http://127.0.0.1:{free_port()}/h")
    verdict = (await http.call("POST", f"/v1/webhooks/{refused['id']}/test")).body
    assert (verdict["delivered"], verdict["status"], verdict["signature_accepted"]) == (
        False,
        None,
        None,
    )
    assert verdict["response_snippet"] is None
    assert "refused" in verdict["error"]
    hung = await local.create_webhook("acme", target.url("/hang"))
    target.script("/hang", Hang())
    verdict = (await http.call("POST", f"/v1/webhooks/{hung['id']}/test")).body
    assert (verdict["status"], verdict["signature_accepted"]) == (None, None)
    assert verdict["error"] == "timed out after 0.5 s"
    assert metrics.get("dispatcher_test_sends_total", result="failed") == 2


async def test_a_client_without_a_sender_keeps_its_address_policy(
    redis_url: str, prefix: str, target: Target
) -> None:
    """A Client's own test send refuses a private address by default (naming the settings)
    and reaches it when its ``security`` allows it."""
    async with Client.from_url(redis_url, prefix=prefix) as strict:
        hook = await strict.create_webhook("acme", target.url())
        verdict = await strict.test_webhook(hook["id"])
    assert (verdict["delivered"], verdict["status"]) == (False, None)
    assert verdict["error"] is not None
    assert "security.allowed_cidrs" in verdict["error"]
    assert "loopback" in verdict["error"]
    assert target.count() == 0
    async with Client.from_url(redis_url, prefix=prefix, security=LOCAL) as lenient:
        verdict = await _after_the_slot(lenient, hook["id"])
    assert (verdict["delivered"], verdict["status"]) == (True, 200)
    assert verdict["response_snippet"] == "ok"
    assert target.count() == 1


async def _after_the_slot(client: Client, webhook_id: str) -> shapes.TestSend:
    """The test send once the webhook's one-a-second slot is free again."""

    async def once() -> shapes.TestSend | None:
        try:
            return await client.test_webhook(webhook_id)
        except TooManyRequests:
            return None

    result: shapes.TestSend = await eventually(once, timeout_s=5, what="a free test slot")
    return result


async def test_at_most_one_test_a_second_across_the_api_and_the_client(
    local: Client, api: tuple[Api, Metrics], target: Target
) -> None:
    """Two tests at once: one is sent, the other answers 429 with Retry-After; a Client
    test right after is refused too, and the target is reached once."""
    http, metrics = api
    hook = await local.create_webhook("acme", target.url())
    path = f"/v1/webhooks/{hook['id']}/test"
    answers = await asyncio.gather(http.call("POST", path), http.call("POST", path))
    assert sorted(a.status for a in answers) == [200, 429]
    limited = next(a for a in answers if a.status == 429)
    assert limited.body["error"]["code"] == "too_many_requests"
    assert limited.headers["Retry-After"] == "1"
    with pytest.raises(TooManyRequests):
        await local.test_webhook(hook["id"])
    assert target.count() == 1
    assert metrics.get("dispatcher_test_sends_total", result="limited") == 1


async def test_the_snippet_is_bounded_and_decoded_with_replacement(
    local: Client, target: Target
) -> None:
    """At most 512 bytes of the answer are shown; a character cut at the bound is replaced."""
    hook = await local.create_webhook("acme", target.url())
    target.script("/hook", Reply(200, b"a" + "\u00e9".encode() * 2000))
    verdict = await local.test_webhook(hook["id"])
    snippet = verdict["response_snippet"]
    assert snippet is not None
    assert snippet == "a" + "\u00e9" * 255 + "\ufffd"
    assert len(b"a" + "\u00e9".encode() * 255) + 1 == SNIPPET_BYTES


async def test_unknown_webhooks_bad_fields_and_disabled_webhooks(
    local: Client, api: tuple[Api, Metrics], target: Target
) -> None:
    """An unknown webhook is 404, a bad or unknown field 422 naming it (nothing is sent),
    and a disabled webhook can still be tested."""
    http, _ = api
    missing = await http.call("POST", "/v1/webhooks/wh_nothing/test")
    assert missing.status == 404
    hook = await local.create_webhook("acme", target.url())
    path = f"/v1/webhooks/{hook['id']}/test"
    for body, field in (({"event_type": "a b"}, "event_type"), ({"color": 1}, "color")):
        answer = await http.call("POST", path, json=body)
        assert answer.status == 422, answer.text
        assert field in answer.body["error"]["message"]
    assert target.count() == 0
    await local.update_webhook(hook["id"], enabled=False)
    answer = await http.call("POST", path)
    assert (answer.status, answer.body["delivered"]) == (200, True)
    assert target.count() == 1


async def test_both_http_clients_keep_the_bounded_snippet(
    redis_url: str, prefix: str, make_sender: MakeSender, target: Target
) -> None:
    """With either delivery.http_client the verdict shows the answer's first 512 bytes."""
    policy = AddressPolicy(allow_private=True)
    async with (
        make_sender(timeout_s=2, concurrency=1, policy=policy, user_agent="t") as sender,
        Client(Store.open(redis_url, prefix=prefix), sender=sender) as client,
    ):
        hook = await client.create_webhook("acme", target.url())
        target.script("/hook", Reply(403, b"x" * 4096))
        verdict = await client.test_webhook(hook["id"])
    assert (verdict["status"], verdict["signature_accepted"]) == (403, False)
    assert verdict["response_snippet"] == "x" * SNIPPET_BYTES
