"""A webhook's own TLS settings end to end, with real https targets and in-process workers: an
mTLS target gets deliveries only with the right client certificate, a target behind a private
CA is reached with ``ca_pem`` and refused without it, contexts are built once per webhook and
never share a connection across client identities, the 422s name their field, and the client
key is write-only."""

from __future__ import annotations

import re
import ssl
from typing import TYPE_CHECKING, Any

import pytest

from dispatcher import Client, InvalidField
from dispatcher.channel import Channels
from dispatcher.config import SecurityConfig
from dispatcher.model import MASK, Webhook
from dispatcher.queue import webhooks
from dispatcher.sender import Sender
from dispatcher.ssrf import AddressPolicy
from tests.admin_api import start_api
from tests.helpers import eventually
from tests.pki import Authority, Leaf, server_context
from tests.proxy import ConnectProxy
from tests.target import Target
from tests.tls_kit import PeerTarget, encrypted, refusing_server

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator

    from tests.conftest import WorkerHarness
    from tests.helpers import MakeSender

CN = "dispatcher-client"
#: How a refused client certificate reads: under TLS 1.3 the server refuses it after the
#: client's handshake is done, so the client learns it at its first read, as the server's
#: alert ("tlsv13 alert certificate required", "tlsv1 alert unknown ca") or, from a server
#: that does not flush it (asyncio's, as here), as the connection closed or reset.
LOCAL = SecurityConfig(allow_private_targets=True)  # a Client's own test sends reach loopback
REFUSED = r"TLS with .* failed|alert|connection reset by the target|closed the connection"


@pytest.fixture(scope="module")
def servers() -> Authority:
    """The private CA of the targets' server certificates."""
    return Authority.new("private server CA")


@pytest.fixture(scope="module")
def clients() -> Authority:
    """The CA the mTLS target trusts for client certificates."""
    return Authority.new("client CA")


@pytest.fixture(scope="module")
def strangers() -> Authority:
    """A CA nobody here trusts."""
    return Authority.new("stranger CA")


@pytest.fixture(scope="module")
def identity(clients: Authority) -> Leaf:
    return clients.issue(CN, server=False)


def _tls(ca: Authority | None = None, leaf: Leaf | None = None) -> dict[str, str]:
    tls = {"ca_pem": ca.cert_pem} if ca is not None else {}
    if leaf is not None:
        tls |= {"client_cert_pem": leaf.cert_pem, "client_key_pem": leaf.key_pem}
    return tls


@pytest.fixture
async def mtls_target(servers: Authority, clients: Authority) -> AsyncIterator[PeerTarget]:
    """An https target (private CA) that demands a client certificate of the client CA."""
    context = server_context(servers.issue("localhost"), client_ca=clients)
    async with PeerTarget(ssl_context=context) as target:
        yield target


@pytest.fixture
async def private_target(servers: Authority) -> AsyncIterator[Target]:
    """An https target whose certificate the private CA signed."""
    async with Target(ssl_context=server_context(servers.issue("localhost"))) as target:
        yield target


async def _deliver_once(client: Client, tenant: str) -> dict[str, dict[str, Any]]:
    """Publish one event to ``tenant`` and wait until each of its jobs is delivered or dead;
    webhook id -> its job."""
    published = await client.publish(tenant, "order.paid", {"n": 1})

    async def settled() -> dict[str, dict[str, Any]] | None:
        found = {}
        for ref in published["jobs"]:
            job = await client.get_job(ref["id"])
            if job is None or job["state"] not in {"delivered", "dead"}:
                return None
            found[ref["webhook_id"]] = dict(job)
        return found

    result: dict[str, dict[str, Any]] = await eventually(settled, what="jobs settled")
    return result


async def test_an_mtls_target_gets_deliveries_only_with_the_right_certificate(
    client: Client,
    workers: WorkerHarness,
    make_sender: MakeSender,
    mtls_target: PeerTarget,
    servers: Authority,
    identity: Leaf,
    strangers: Authority,
) -> None:
    """Of three webhooks on one mTLS target, only the one with the client CA's certificate
    is delivered (the target saw its name); without a certificate, or with another CA's under
    the same name, nothing arrives and the attempt fails at the connection, before any answer."""
    await workers.start(max_attempts=1, sender_class=make_sender)
    impostor = strangers.issue(CN, server=False)
    tenant = "acme-mtls"
    right = await client.create_webhook(
        tenant, mtls_target.url("/right"), tls=_tls(servers, identity)
    )
    none = await client.create_webhook(tenant, mtls_target.url("/none"), tls=_tls(servers))
    other = await client.create_webhook(
        tenant, mtls_target.url("/other"), tls=_tls(servers, impostor)
    )
    jobs = await _deliver_once(client, tenant)
    assert jobs[right["id"]]["state"] == "delivered"
    assert [r.path for r in mtls_target.received] == ["/right"]
    assert mtls_target.peers == [CN]
    for refused in (none, other):
        job = jobs[refused["id"]]
        assert job["state"] == "dead"
        assert job["last_status"] is None
        assert re.search(REFUSED, str(job["last_error"])), job["last_error"]


async def test_a_private_ca_target_is_reached_with_ca_pem_only(
    client: Client,
    workers: WorkerHarness,
    make_sender: MakeSender,
    private_target: Target,
    servers: Authority,
    strangers: Authority,
) -> None:
    """A target behind a private CA is delivered to with that CA as ``ca_pem``; without it
    (the system's roots) or with another CA, the attempt fails: certificate verify failed."""
    await workers.start(max_attempts=1, sender_class=make_sender)
    tenant = "acme-private"
    trusted = await client.create_webhook(tenant, private_target.url("/trusted"), tls=_tls(servers))
    default = await client.create_webhook(tenant, private_target.url("/default"))
    other = await client.create_webhook(tenant, private_target.url("/other"), tls=_tls(strangers))
    jobs = await _deliver_once(client, tenant)
    assert jobs[trusted["id"]]["state"] == "delivered"
    assert [r.path for r in private_target.received] == ["/trusted"]
    for refused in (default, other):
        job = jobs[refused["id"]]
        assert job["state"] == "dead"
        assert "certificate verify failed" in str(job["last_error"])


async def test_the_context_is_built_once_per_webhook_and_again_when_tls_changes(
    client: Client,
    workers: WorkerHarness,
    mtls_target: PeerTarget,
    servers: Authority,
    clients: Authority,
    identity: Leaf,
) -> None:
    """Twenty deliveries build one context; a PATCH of the description, or of tls sent back
    as answered (the key "***"), keeps it; a PATCH with a new certificate builds a second,
    and the target sees the new name."""
    worker = await workers.start()
    tenant = "acme-cache"
    hook = await client.create_webhook(tenant, mtls_target.url(), tls=_tls(servers, identity))
    for _ in range(20):
        await client.publish(tenant, "order.paid", {"n": 1})
    await mtls_target.wait_for(20)
    assert worker.channels.built == 1
    await client.update_webhook(hook["id"], description="renamed")
    answered = (await client.get_webhook(hook["id"]))["tls"]
    assert answered is not None
    assert answered["client_key_pem"] == MASK
    await client.update_webhook(hook["id"], tls=answered)
    await client.publish(tenant, "order.paid", {"n": 2})
    await mtls_target.wait_for(21)
    assert worker.channels.built == 1
    renewed = clients.issue("dispatcher-client-2", server=False)
    await client.update_webhook(hook["id"], tls=_tls(servers, renewed))
    await client.publish(tenant, "order.paid", {"n": 3})
    await mtls_target.wait_for(22)
    assert worker.channels.built == 2
    assert mtls_target.peers == [CN] * 21 + ["dispatcher-client-2"]


async def test_client_identities_never_share_a_connection(
    make_sender: MakeSender, servers: Authority, clients: Authority, identity: Leaf
) -> None:
    """Two webhooks on one origin, one with a client certificate and one without, sending
    in turns: the target sees the certificate on every request of the first and on none of
    the second (each keeps its own connections)."""
    context = server_context(servers.issue("localhost"), client_ca=clients)
    context.verify_mode = ssl.CERT_OPTIONAL  # asks for one, takes none too
    async with PeerTarget(ssl_context=context) as target:
        fields = {"tenant_id": "t", "url": target.url("/a"), "tls": _tls(servers, identity)}
        with_cert = Webhook.create(fields, now_ms=0)
        fields = {"tenant_id": "t", "url": target.url("/b"), "tls": _tls(servers)}
        without = Webhook.create(fields, now_ms=0)
        channels = Channels()
        policy = AddressPolicy(allow_private=True, allowed_cidrs=())
        async with make_sender(
            timeout_s=2.0, concurrency=4, policy=policy, user_agent="dispatcher/test"
        ) as sender:
            for _ in range(3):
                for hook in (with_cert, without, without, with_cert):
                    outcome = await sender.attempt(
                        hook.url, b"{}", {"webhook-id": "msg_1"}, channel=channels.of(hook)
                    )
                    assert outcome.status == 200, outcome.error
        seen = {(r.path, peer) for r, peer in zip(target.received, target.peers, strict=True)}
        assert seen == {("/a", CN), ("/b", None)}
        assert target.connections == 2  # one per identity, each reused
        assert channels.built == 2


class _LiveTarget(PeerTarget):
    """A PeerTarget that counts its connections still open."""

    def __init__(self, *, ssl_context: ssl.SSLContext) -> None:
        super().__init__(ssl_context=ssl_context)
        self.open = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            await super()._serve(reader, writer)
        finally:
            self.open -= 1


async def test_connections_of_former_tls_settings_are_closed_once_idle(
    monkeypatch: pytest.MonkeyPatch, servers: Authority, clients: Authority, identity: Leaf
) -> None:
    """After a webhook's tls changes, the native client's idle connections made with the old
    settings (a pool no attempt asks for again) are closed once idle past their time, not
    held open for good."""
    monkeypatch.setattr("dispatcher.sender._IDLE_S", 0.0)  # every idle connection is past it
    context = server_context(servers.issue("localhost"), client_ca=clients)
    async with _LiveTarget(ssl_context=context) as target:
        hook = Webhook.create(
            {"tenant_id": "t", "url": target.url(), "tls": _tls(servers, identity)}, now_ms=0
        )
        channels = Channels()
        policy = AddressPolicy(allow_private=True, allowed_cidrs=())
        async with Sender(
            timeout_s=2.0, concurrency=1, policy=policy, user_agent="dispatcher/test"
        ) as sender:
            for renewed in (None, clients.issue("dispatcher-client-2", server=False)):
                if renewed is not None:
                    hook.apply({"tls": _tls(servers, renewed)})
                outcome = await sender.attempt(hook.url, b"{}", {}, channel=channels.of(hook))
                assert outcome.status == 200, outcome.error
            await eventually(lambda: target.open == 1, what="the old connection closed")
    assert target.peers == [CN, "dispatcher-client-2"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_refused_client_certificate_reads_the_same_with_either_client(
    make_sender: MakeSender, servers: Authority, clients: Authority, version: ssl.TLSVersion
) -> None:
    """An endpoint that refuses the handshake for want of a client certificate (in TLS 1.2
    during it, in 1.3 at the first read) fails the attempt as "TLS with <host> failed: "
    and OpenSSL's alert, with either HTTP client."""
    context = server_context(servers.issue("localhost"), client_ca=clients)
    context.maximum_version = version
    hook = Webhook.create({"tenant_id": "t", "url": "https://x/", "tls": _tls(servers)}, now_ms=0)
    policy = AddressPolicy(allow_private=True, allowed_cidrs=())
    with refusing_server(context) as port:
        async with make_sender(
            timeout_s=2.0, concurrency=1, policy=policy, user_agent="dispatcher/test"
        ) as sender:
            outcome = await sender.attempt(
                f"https://127.0.0.1:{port}/", b"{}", {}, channel=Channels().of(hook)
            )
    assert outcome.error is not None
    assert re.fullmatch(r"TLS with 127\.0\.0\.1 failed: \[SSL: \w+\] [^<>]+", outcome.error), (
        outcome.error
    )


async def test_an_mtls_delivery_goes_through_the_egress_proxy(
    client: Client,
    workers: WorkerHarness,
    mtls_target: PeerTarget,
    servers: Authority,
    identity: Leaf,
) -> None:
    """Through the CONNECT tunnel the webhook's own CA and client certificate are used with
    the target end to end."""
    async with ConnectProxy() as proxy:
        await workers.start(proxy_url=proxy.url, sender_class=Sender)
        await client.create_webhook("acme-proxy", mtls_target.url(), tls=_tls(servers, identity))
        await client.publish("acme-proxy", "order.paid", {"n": 1})
        await mtls_target.wait_for(1)
        assert proxy.connects == 1
    assert mtls_target.peers == [CN]


async def test_a_test_send_uses_the_webhooks_tls(
    redis_url: str, prefix: str, mtls_target: PeerTarget, servers: Authority, identity: Leaf
) -> None:
    """A Client's test send presents the webhook's client certificate and trusts its CA; the
    same webhook without the certificate is refused."""
    async with Client.from_url(redis_url, prefix=prefix, security=LOCAL) as client:
        hook = await client.create_webhook(
            "acme-test", mtls_target.url(), tls=_tls(servers, identity)
        )
        verdict = await client.test_webhook(hook["id"])
        assert (verdict["delivered"], verdict["error"]) == (True, None)
        hook = await client.create_webhook("acme-test", mtls_target.url(), tls=_tls(servers))
        verdict = await client.test_webhook(hook["id"])
        assert verdict["delivered"] is False
        assert re.search(REFUSED, str(verdict["error"])), verdict["error"]
    assert mtls_target.peers == [CN]


def _bad(servers: Authority, identity: Leaf, strangers: Authority) -> dict[str, Any]:
    other = strangers.issue(CN, server=False)
    return {
        "tls.ca_pem": {"ca_pem": "not a certificate"},
        "tls.client_key_pem": {"client_cert_pem": identity.cert_pem},
        "tls.client_cert_pem": {"client_key_pem": identity.key_pem},
        "tls": {},
        "tls.client_key_pem mismatch": {
            "client_cert_pem": identity.cert_pem,
            "client_key_pem": other.key_pem,
        },
        "tls.client_key_pem encrypted": {
            "client_cert_pem": identity.cert_pem,
            "client_key_pem": encrypted(identity.key_pem),
        },
    }


@pytest.mark.parametrize(
    "case",
    [
        "tls.ca_pem",
        "tls.client_key_pem",
        "tls.client_cert_pem",
        "tls",
        "tls.client_key_pem mismatch",
        "tls.client_key_pem encrypted",
    ],
)
async def test_each_refusal_is_a_422_naming_its_field(
    client: Client, case: str, servers: Authority, identity: Leaf, strangers: Authority
) -> None:
    """Create and PATCH through the admin API answer 422 invalid_field naming the tls field,
    the Client raises InvalidField with it, and nothing is stored."""
    tls = _bad(servers, identity, strangers)[case]
    field = case.split(maxsplit=1)[0]
    _, api = await start_api(client)
    try:
        body = {"tenant_id": "acme-422", "url": "https://127.0.0.1:9/h", "tls": tls}
        answer = await api.call("POST", "/v1/webhooks", json=body)
        assert answer.status == 422
        assert answer.body["error"]["code"] == "invalid_field"
        assert answer.body["error"]["message"].startswith(field + ": ")
        hook = await client.create_webhook("acme-422", "https://127.0.0.1:9/h")
        answer = await api.call("PATCH", f"/v1/webhooks/{hook['id']}", json={"tls": tls})
        assert answer.status == 422
        assert answer.body["error"]["message"].startswith(field + ": ")
        for pem in tls.values():  # no line of a PEM comes back
            assert not [line for line in pem.splitlines()[1:-1] if line in answer.text]
    finally:
        await api.close()
    with pytest.raises(InvalidField) as raised:
        await client.create_webhook("acme-422", "https://127.0.0.1:9/h", tls=tls)
    assert raised.value.field == field
    listed = await client.list_webhooks("acme-422")
    assert [h["tls"] for h in listed["items"]] == [None]


async def test_answers_show_the_certificates_and_mask_the_key(
    client: Client, servers: Authority, identity: Leaf
) -> None:
    """Create, GET and the admin API answer the CA and client certificate as given and the
    client key as "***"; ``tls: null`` removes the settings."""
    hook = await client.create_webhook(
        "acme-wire", "https://127.0.0.1:9/h", tls=_tls(servers, identity)
    )
    expected = {**_tls(servers, identity), "client_key_pem": MASK}
    assert hook["tls"] == expected
    assert (await client.get_webhook(hook["id"]))["tls"] == expected
    _, api = await start_api(client)
    try:
        answer = await api.call("GET", f"/v1/webhooks/{hook['id']}")
        assert answer.body["tls"] == expected
        assert identity.key_pem.splitlines()[1] not in answer.text
    finally:
        await api.close()
    assert (await client.update_webhook(hook["id"], tls=None))["tls"] is None


async def test_stored_tls_settings_that_no_longer_load_fail_the_attempt_clearly(
    client: Client, workers: WorkerHarness, private_target: Target, servers: Authority
) -> None:
    """A stored ``tls`` OpenSSL now refuses (written by an older release, or a newer OpenSSL
    stricter than the check was) fails each attempt with a text naming the tls settings,
    as a connection error would: the job is settled (here dead), never crash-looping
    through reclaim without an attempt, and nothing reaches the target."""
    await workers.start(max_attempts=1)
    tenant = "acme-stale-tls"
    created = await client.create_webhook(tenant, private_target.url("/stale"), tls=_tls(servers))
    hook = await webhooks.get_webhook(client.store, created["id"])
    hook.tls = {"ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}
    await webhooks.save_webhook(client.store, hook)  # past the check, as an old record would be
    job = (await _deliver_once(client, tenant))[hook.id]
    assert job["state"] == "dead"
    assert "tls settings do not load" in str(job["last_error"])
    assert private_target.received == []
