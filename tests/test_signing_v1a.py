"""``signature_scheme: "v1a"``: webhooks signing with an Ed25519 ``whsk_`` key, answering its
``whpk_`` public key; rotation within and across schemes; real deliveries verified with the
public key alone."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from standardwebhooks.webhooks import Webhook as Reference

from dispatcher import Client, InvalidField, InvalidSignature, verify
from dispatcher.config import SecurityConfig
from dispatcher.model import Webhook
from dispatcher.queue.keys import Keys
from dispatcher.signing import (
    generate_signing_key,
    public_key_of,
    sign,
    valid_signing_key,
)
from tests.test_verify import BODY, MSG_ID, TIMESTAMP_S, V1A_PUBLIC, V1A_SIGNATURE

if TYPE_CHECKING:

    import redis.asyncio as aioredis

    from tests.admin_api import Api
    from tests.conftest import WorkerHarness
    from tests.target import Received, Target

# RFC 8032, section 7.1, test 1: the key the pinned v1a vector is signed with.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
V1A_SIGNING_KEY = (
    "whsk_nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2DXWpgBgrEKt9VL/tPJZAc6DuFy89qmIyWvAhpo9wdRGg=="
)


def _whsk(raw: bytes) -> str:
    return "whsk_" + base64.b64encode(raw).decode()


# --- keys and signatures ----------------------------------------------------------------------


def test_the_pinned_vector_is_rfc8032_test_1_signing_the_shared_inputs() -> None:
    """The pinned whsk_/whpk_ pair is RFC 8032's test key, and signing the Standard Webhooks
    inputs with it gives the pinned signature, as cryptography computes it."""
    private = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert public == RFC8032_PUBLIC
    assert private.sign(b"").hex().startswith("e5564300c360ac72")  # RFC 8032's own signature
    assert _whsk(RFC8032_SEED + RFC8032_PUBLIC) == V1A_SIGNING_KEY
    assert public_key_of(V1A_SIGNING_KEY) == V1A_PUBLIC
    signature = private.sign(f"{MSG_ID}.{TIMESTAMP_S}.".encode() + BODY)
    expected = "v1a," + base64.b64encode(signature).decode()
    assert sign(MSG_ID, TIMESTAMP_S, BODY, [V1A_SIGNING_KEY]) == expected == V1A_SIGNATURE


def test_a_seed_alone_signs_as_its_64_byte_key_and_a_mismatched_key_is_refused() -> None:
    """whsk_ of the 32-byte seed signs like the 64-byte form; a 64-byte key whose second half
    is not its seed's public key, or of another length, is no signing key."""
    seed_only = _whsk(RFC8032_SEED)
    assert valid_signing_key(seed_only)
    assert sign(MSG_ID, TIMESTAMP_S, BODY, [seed_only]) == V1A_SIGNATURE
    assert public_key_of(seed_only) == V1A_PUBLIC
    other_public = bytes(32)
    for bad in (_whsk(RFC8032_SEED + other_public), _whsk(RFC8032_SEED[:31]), "whsk_!!", "whsk_"):
        assert not valid_signing_key(bad)
        with pytest.raises(InvalidField) as caught:
            Webhook.create({"tenant_id": "t", "url": "https://x.io", "secret": bad}, now_ms=0)
        assert caught.value.field == "secret"


def test_generated_signing_keys_are_64_bytes_seed_then_public_key() -> None:
    """A generated whsk_ key holds a random seed and that seed's public key, never repeating."""
    keys = {generate_signing_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        raw = base64.b64decode(key.removeprefix("whsk_"), validate=True)
        private = Ed25519PrivateKey.from_private_bytes(raw[:32])
        assert raw[32:] == private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert public_key_of(key) == "whpk_" + base64.b64encode(raw[32:]).decode()


def test_a_rotation_signs_with_both_schemes_in_key_order() -> None:
    """Keys of both schemes sign one header, current first: ``v1a,... v1,...``."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the shared test vector
    header = sign(MSG_ID, TIMESTAMP_S, BODY, [V1A_SIGNING_KEY, secret])
    assert header == V1A_SIGNATURE + " v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# --- the API ----------------------------------------------------------------------------------


async def test_a_v1a_webhook_answers_its_public_key_and_keeps_its_signing_key(
    api: Api, redis: aioredis.Redis, prefix: str
) -> None:
    """Created with signature_scheme v1a (no secret), a webhook gets a whsk_ key (answered
    once, at create) and shows its whpk_ public_key in every answer; a v1 webhook's is null
    and its stored record has no signature_scheme (so older releases still read it)."""
    created = await api.call(
        "POST",
        "/v1/webhooks",
        json={"tenant_id": "acme", "url": "https://example.com/h", "signature_scheme": "v1a"},
    )
    assert created.status == 201, created.text
    hook = created.body
    assert hook["signature_scheme"] == "v1a"
    assert hook["secret"].startswith("whsk_")
    assert hook["public_key"] == public_key_of(hook["secret"])
    got = await api.call("GET", f"/v1/webhooks/{hook['id']}")
    assert got.body["public_key"] == hook["public_key"]
    assert "secret" not in got.body
    assert hook["secret"] not in got.text
    listed = await api.call("GET", "/v1/webhooks", params={"tenant_id": "acme"})
    assert [h["public_key"] for h in listed.body["items"]] == [hook["public_key"]]

    plain = (
        await api.call("POST", "/v1/webhooks", json={"tenant_id": "acme", "url": "https://x.io"})
    ).body
    assert (plain["signature_scheme"], plain["public_key"]) == ("v1", None)
    assert plain["secret"].startswith("whsec_")
    keys = Keys(prefix)
    stored = orjson.loads(await redis.hget(keys.webhooks, plain["id"]) or b"{}")
    assert "signature_scheme" not in stored
    stored = orjson.loads(await redis.hget(keys.webhooks, hook["id"]) or b"{}")
    assert stored["signature_scheme"] == "v1a"


async def test_a_given_signing_key_brings_its_scheme(api: Api) -> None:
    """A whsk_ secret given at create or PATCH makes the webhook v1a; a PATCH to v1a alone
    makes a new key at once; the same scheme again changes nothing."""
    created = await api.call(
        "POST",
        "/v1/webhooks",
        json={"tenant_id": "acme", "url": "https://x.io", "secret": V1A_SIGNING_KEY},
    )
    assert (created.body["signature_scheme"], created.body["public_key"]) == ("v1a", V1A_PUBLIC)
    path = f"/v1/webhooks/{created.body['id']}"
    same = await api.call("PATCH", path, json={"signature_scheme": "v1a"})
    assert same.body["public_key"] == V1A_PUBLIC

    plain = await api.call(
        "POST", "/v1/webhooks", json={"tenant_id": "acme", "url": "https://x.io"}
    )
    path = f"/v1/webhooks/{plain.body['id']}"
    switched = await api.call("PATCH", path, json={"signature_scheme": "v1a"})
    assert switched.status == 200, switched.text
    assert switched.body["signature_scheme"] == "v1a"
    assert switched.body["public_key"].startswith("whpk_")
    patched = await api.call("PATCH", path, json={"secret": V1A_SIGNING_KEY})
    assert (patched.body["signature_scheme"], patched.body["public_key"]) == ("v1a", V1A_PUBLIC)
    back = await api.call("PATCH", path, json={"secret": plain.body["secret"]})
    assert (back.body["signature_scheme"], back.body["public_key"]) == ("v1", None)


async def test_rotate_secret_switches_scheme_over_the_api(
    api: Api, client: Client, redis: aioredis.Redis, prefix: str
) -> None:
    """``POST /rotate-secret {"signature_scheme": "v1a"}`` answers the new whsk_ key and its
    public key, the old whsec_ secret signing beside it; without a scheme it keeps the
    webhook's."""
    hook = await client.create_webhook("acme", "https://x.io")
    path = f"/v1/webhooks/{hook['id']}/rotate-secret"
    rotated = await api.call("POST", path, json={"signature_scheme": "v1a", "grace_s": 60})
    assert rotated.status == 200, rotated.text
    assert (rotated.body["signature_scheme"], rotated.body["secret"][:5]) == ("v1a", "whsk_")
    assert rotated.body["public_key"] == public_key_of(rotated.body["secret"])
    again = await api.call("POST", path)
    assert (again.body["signature_scheme"], again.body["secret"][:5]) == ("v1a", "whsk_")
    assert again.body["public_key"] != rotated.body["public_key"]
    stored = orjson.loads(await redis.hget(Keys(prefix).webhooks, hook["id"]) or b"{}")
    assert [key.partition("_")[0] for key, _until in stored["old_secrets"]] == ["whsec", "whsk"]


BAD_KEYS: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("POST", "/v1/webhooks", {"signature_scheme": "v2"}, "signature_scheme", '"v1" or "v1a"'),
    ("POST", "/v1/webhooks", {"signature_scheme": None}, "signature_scheme", '"v1" or "v1a"'),
    (
        "POST",
        "/v1/webhooks",
        {"signature_scheme": "v1a", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        "secret",
        "must be a whsk_ key for signature_scheme v1a",
    ),
    (
        "POST",
        "/v1/webhooks",
        {"signature_scheme": "v1", "secret": V1A_SIGNING_KEY},
        "secret",
        "must be a whsec_ key for signature_scheme v1",
    ),
    ("POST", "/v1/webhooks", {"secret": _whsk(RFC8032_SEED + bytes(32))}, "secret", "whsk_"),
    ("PATCH", "/v1/webhooks/{v1a}", {"signature_scheme": "v1"}, "signature_scheme", "rotate"),
    ("PATCH", "/v1/webhooks/{v1a}", {"signature_scheme": ["v1a"]}, "signature_scheme", "v1a"),
    (
        "POST",
        "/v1/webhooks/{v1a}/rotate-secret",
        {"signature_scheme": "v3"},
        "signature_scheme",
        "",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "field", "reason"), BAD_KEYS)
async def test_bad_schemes_and_keys_are_refused_by_field(
    api: Api,
    client: Client,
    redis: aioredis.Redis,
    prefix: str,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    """A scheme that is none, a secret of the other scheme, a mismatched whsk_ key, a PATCH to
    v1 without its secret: 422 naming the field, nothing changed."""
    hook = await client.create_webhook("acme", "https://x.io", signature_scheme="v1a")
    before = sorted([(k, await redis.dump(k)) async for k in redis.scan_iter(f"{prefix}:*")])
    if method == "POST" and path == "/v1/webhooks":
        body = {"tenant_id": "acme", "url": "https://x.io", **body}
    answer = await api.call(method, path.replace("{v1a}", hook["id"]), json=body)
    assert answer.status == 422, answer.text
    assert answer.body["error"]["code"] == "invalid_field"
    assert answer.body["error"]["message"].startswith(f"{field}: "), answer.body
    assert reason in answer.body["error"]["message"]
    after = sorted([(k, await redis.dump(k)) async for k in redis.scan_iter(f"{prefix}:*")])
    assert after == before


# --- deliveries -------------------------------------------------------------------------------


def _check(req: Received, key: str | None) -> None:
    """``verify`` as a receiver calls it (``key`` from an answer, where it may be null)."""
    assert key is not None
    verify(req.body, req.headers, key)


async def test_v1a_deliveries_verify_with_the_public_key_alone(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Each delivery of a v1a webhook verifies with ``dispatcher.verify(body, headers,
    public_key)`` from its answer, and with no other key."""
    hook = await client.create_webhook("acme", target.url(), signature_scheme="v1a")
    await workers.start()
    for n in range(5):
        await client.publish("acme", "order.paid", {"order": n})
    received = await target.wait_for(5)
    for req in received:
        assert req.headers["webhook-signature"].startswith("v1a,")
        assert len(req.headers["webhook-signature"].split()) == 1
        _check(req, hook["public_key"])
        with pytest.raises(InvalidSignature):
            _check(req, public_key_of(generate_signing_key()))
    assert sorted(orjson.loads(r.body)["order"] for r in received) == list(range(5))


async def test_v1a_rotation_signs_with_both_keys_through_the_grace(
    client: Client, workers: WorkerHarness, target: Target, redis: aioredis.Redis, prefix: str
) -> None:
    """After a v1a rotation both public keys verify each delivery during the grace; once the
    grace has passed (its end moved into the past in the record), only the new one does."""
    hook = await client.create_webhook("acme", target.url(), signature_scheme="v1a")
    rotated = await client.rotate_secret(hook["id"], grace_s=3600)
    assert rotated["signature_scheme"] == "v1a"
    assert rotated["secret"].startswith("whsk_")
    assert rotated["public_key"] not in (None, hook["public_key"])
    await workers.start()
    await client.publish("acme", "order.paid", {"n": 1})
    [during] = await target.wait_for(1)
    assert [e.partition(",")[0] for e in during.headers["webhook-signature"].split()] == [
        "v1a",
        "v1a",
    ]
    _check(during, rotated["public_key"])
    _check(during, hook["public_key"])

    keys = Keys(prefix)
    record = orjson.loads(await redis.hget(keys.webhooks, hook["id"]) or b"{}")
    record["old_secrets"] = [[old, 1] for old, _until in record["old_secrets"]]
    await redis.hset(keys.webhooks, hook["id"], orjson.dumps(record))
    await client.publish("acme", "order.paid", {"n": 2})
    after = (await target.wait_for(2))[1]
    assert len(after.headers["webhook-signature"].split()) == 1
    _check(after, rotated["public_key"])
    with pytest.raises(InvalidSignature):
        _check(after, hook["public_key"])


async def test_a_rotation_from_v1_to_v1a_keeps_v1_receivers_verifying(
    client: Client, workers: WorkerHarness, target: Target
) -> None:
    """Rotated from v1 to v1a, deliveries carry ``v1a,... v1,...``: the reference library
    with the old whsec_ secret and ``verify`` with the new whpk_ key both accept them."""
    hook = await client.create_webhook("acme", target.url())
    rotated = await client.rotate_secret(hook["id"], grace_s=3600, signature_scheme="v1a")
    assert (rotated["signature_scheme"], rotated["secret"][:5]) == ("v1a", "whsk_")
    assert rotated["public_key"] == public_key_of(rotated["secret"])
    await workers.start()
    await client.publish("acme", "order.paid", {"n": 1})
    [req] = await target.wait_for(1)
    versions = [e.partition(",")[0] for e in req.headers["webhook-signature"].split()]
    assert versions == ["v1a", "v1"]
    Reference(hook["secret"]).verify(req.body, dict(req.headers))
    _check(req, rotated["public_key"])
    _check(req, hook["secret"])
    back = await client.rotate_secret(hook["id"], grace_s=0, signature_scheme="v1")
    assert (back["signature_scheme"], back["public_key"], back["secret"][:6]) == (
        "v1",
        None,
        "whsec_",
    )


async def test_a_test_send_signs_v1a_too(redis_url: str, prefix: str, target: Target) -> None:
    """``test_webhook`` of a v1a webhook sends a delivery its public key verifies."""
    local = SecurityConfig(allow_private_targets=True)
    async with Client.from_url(redis_url, prefix=prefix, security=local) as client:
        hook = await client.create_webhook("acme", target.url(), signature_scheme="v1a")
        verdict = await client.test_webhook(hook["id"])
    assert verdict["delivered"] is True, verdict
    [req] = target.received
    _check(req, hook["public_key"])
