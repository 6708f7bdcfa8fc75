"""``dispatcher.verify``, a receiver's signature check: the Standard Webhooks vectors,
signatures made by ``cryptography`` directly, and every way a delivery can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook as Reference

import dispatcher
from dispatcher import InvalidSignature, verify
from dispatcher.signing import generate_secret, generate_signing_key, public_key_of, sign

# The inputs every Standard Webhooks library tests its signer with (python, go, js, ...).
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP_S = 1614265330
BODY = b'{"test": 2432232314}'
V1_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the published test vector
V1_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# The standard has no v1a vector: the same inputs signed with RFC 8032's test 1 key (its seed
# 9d61b1..., public key d75a98...), pinned here; test_signing_v1a.py recomputes it with
# cryptography.
V1A_PUBLIC = "whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
V1A_SIGNATURE = (
    "v1a,fldxM4gAKugP6nnt1hdz3sgGfZ6d99nzrMFnZOELIxbzEHoVmAb2ADpkJK7zgPePmPsle0zV9jSeGlHFG2NVAw=="
)


def _headers(
    signature: str, msg_id: str = MSG_ID, timestamp: str = str(TIMESTAMP_S)
) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}


def _whpk(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "whpk_" + base64.b64encode(raw).decode()


def _refused(check: str, body: bytes | str, headers: Any, key: Any, **kwargs: Any) -> str:
    """The message of the InvalidSignature that ``verify`` raises, failing ``check``."""
    with pytest.raises(InvalidSignature) as caught:
        verify(body, headers, key, **kwargs)
    assert caught.value.check == check, caught.value.message
    assert caught.value.code == "invalid_signature"
    return caught.value.message


def test_the_shared_v1_vector_verifies() -> None:
    """The standard's shared v1 inputs and signature verify with its whsec_ secret."""
    verify(BODY, _headers(V1_SIGNATURE), V1_SECRET, now_s=TIMESTAMP_S)
    verify(BODY.decode(), _headers(V1_SIGNATURE), V1_SECRET, now_s=TIMESTAMP_S)  # str body


def test_the_pinned_v1a_vector_verifies() -> None:
    """The pinned v1a signature of the shared inputs verifies with its whpk_ public key."""
    verify(BODY, _headers(V1A_SIGNATURE), V1A_PUBLIC, now_s=TIMESTAMP_S)


def test_a_mixed_header_verifies_with_either_key() -> None:
    """A rotation's header (``v1,... v1a,...``) verifies with the whsec_ secret, with the
    whpk_ public key, and with both given at once; the reference library checks its v1 entry."""
    headers = _headers(f"{V1_SIGNATURE} {V1A_SIGNATURE}")
    for key in (V1_SECRET, V1A_PUBLIC, [V1A_PUBLIC, V1_SECRET]):
        verify(BODY, headers, key, now_s=TIMESTAMP_S)
    old, new, now = generate_secret(), generate_signing_key(), int(time.time())
    mixed = _headers(sign("msg_x", now, BODY, [new, old]), "msg_x", str(now))
    assert [entry.partition(",")[0] for entry in mixed["webhook-signature"].split()] == [
        "v1a",
        "v1",
    ]
    Reference(old).verify(BODY, mixed)  # the reference has a clock of its own: now
    verify(BODY, mixed, public_key_of(new))


def test_header_names_are_case_insensitive_and_extra_headers_ignored() -> None:
    """``Webhook-Signature`` and friends in any case, among other headers, verify."""
    headers = {
        "Content-Type": "application/json",
        "Webhook-Id": MSG_ID,
        "WEBHOOK-TIMESTAMP": str(TIMESTAMP_S),
        "Webhook-Signature": V1A_SIGNATURE,
    }
    verify(BODY, headers, V1A_PUBLIC, now_s=TIMESTAMP_S)


def test_a_header_stuffed_with_v1a_entries_costs_a_bounded_number_of_checks() -> None:
    """Only the first MAX_V1A_ENTRIES distinct v1a entries are checked (each an Ed25519
    verification): a genuine signature behind thousands of forged ones is not looked at, so
    a forged header cannot make the receiver spend seconds of CPU, while a v1 entry after
    them still is."""
    other = generate_signing_key()
    forged = [sign(MSG_ID, TIMESTAMP_S, BODY, [other])]  # another key's: verified, refused
    junk = [
        "v1a," + base64.b64encode(bytes([n % 256, n // 256]) + bytes(62)).decode()
        for n in range(dispatcher.verifier.MAX_V1A_ENTRIES + 5)
    ]
    header = " ".join([*forged * 1000, *junk, V1A_SIGNATURE])
    _refused("signature", BODY, _headers(header), V1A_PUBLIC, now_s=TIMESTAMP_S)
    # a few forged entries in front of the genuine one (a rotation's old keys) still verify
    verify(
        BODY,
        _headers(" ".join([*forged * 1000, *junk[:5], V1A_SIGNATURE])),
        V1A_PUBLIC,
        now_s=TIMESTAMP_S,
    )
    verify(BODY, _headers(" ".join([*junk, V1_SIGNATURE])), V1_SECRET, now_s=TIMESTAMP_S)


def test_dispatcher_signatures_verify_with_cryptography_directly() -> None:
    """``signing.sign``'s v1a signature is a plain Ed25519 signature of ``id.timestamp.body``
    that ``cryptography``'s Ed25519PublicKey accepts with the key in ``public_key``."""
    key = generate_signing_key()
    header = sign("msg_1", 1_700_000_000, b"{}", [key])
    version, _, text = header.partition(",")
    assert version == "v1a"
    raw_public = base64.b64decode(public_key_of(key).removeprefix("whpk_"))
    Ed25519PublicKey.from_public_bytes(raw_public).verify(
        base64.b64decode(text), b"msg_1.1700000000.{}"
    )


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    msg_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    timestamp=st.integers(min_value=0, max_value=10**12),
    body=st.binary(max_size=512),
    extra=st.lists(st.sampled_from(["v1,AAAA", "v2,xyz", "v1a,bm90IGEgc2ln", "garbage"])),
)
def test_signatures_made_by_cryptography_verify(
    seed: bytes, msg_id: str, timestamp: int, body: bytes, extra: list[str]
) -> None:
    """Any Ed25519 signature ``cryptography`` makes of ``id.timestamp.body``, and any HMAC
    of it, verifies; other entries beside it (other versions, junk) do not matter."""
    private = Ed25519PrivateKey.from_private_bytes(seed)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    ed = "v1a," + base64.b64encode(private.sign(signed)).decode()
    secret = b"k" + seed  # 33 bytes: a whsec_ key
    mac = "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    headers = _headers(" ".join([*extra, ed, mac]), msg_id, str(timestamp))
    verify(body, headers, _whpk(private), now_s=timestamp)
    verify(body, headers, "whsec_" + base64.b64encode(secret).decode(), now_s=timestamp)


# --- what is refused --------------------------------------------------------------------------


def test_tampering_is_refused() -> None:
    """A changed body, id or timestamp fails the signature check, for v1 and v1a alike."""
    for key, signature in ((V1_SECRET, V1_SIGNATURE), (V1A_PUBLIC, V1A_SIGNATURE)):
        _refused("signature", BODY + b" ", _headers(signature), key, now_s=TIMESTAMP_S)
        _refused("signature", BODY, _headers(signature, msg_id="msg_other"), key, now_s=TIMESTAMP_S)
        stamp = str(TIMESTAMP_S + 1)
        _refused("signature", BODY, _headers(signature, timestamp=stamp), key, now_s=TIMESTAMP_S)
        # the same number written otherwise is other bytes, so another message
        stamp = "0" + str(TIMESTAMP_S)
        _refused("signature", BODY, _headers(signature, timestamp=stamp), key, now_s=TIMESTAMP_S)


def test_a_wrong_key_or_version_is_refused() -> None:
    """Another key of the same kind, or a key of the other scheme, finds no signature."""
    other_public = public_key_of(generate_signing_key())
    message = _refused("signature", BODY, _headers(V1A_SIGNATURE), other_public, now_s=TIMESTAMP_S)
    assert message == "no v1a signature in webhook-signature matches the key"
    _refused("signature", BODY, _headers(V1_SIGNATURE), generate_secret(), now_s=TIMESTAMP_S)
    # a whpk_ key checks v1a entries only, a whsec_ secret v1 entries only
    message = _refused("signature", BODY, _headers(V1_SIGNATURE), V1A_PUBLIC, now_s=TIMESTAMP_S)
    assert "no v1a signature" in message
    _refused("signature", BODY, _headers(V1A_SIGNATURE), V1_SECRET, now_s=TIMESTAMP_S)
    # the v1a signature presented as v1, or as an unknown version, is not checked as v1a
    renamed = V1A_SIGNATURE.replace("v1a,", "v1,")
    _refused("signature", BODY, _headers(renamed), V1A_PUBLIC, now_s=TIMESTAMP_S)
    renamed = V1A_SIGNATURE.replace("v1a,", "v2,")
    _refused("signature", BODY, _headers(renamed), V1A_PUBLIC, now_s=TIMESTAMP_S)


def test_the_timestamp_must_be_within_the_tolerance() -> None:
    """Older or newer than the tolerance (default 5 minutes) is refused, saying which; at the
    tolerance exactly it passes; a wider tolerance admits more."""
    headers = _headers(V1A_SIGNATURE)
    verify(BODY, headers, V1A_PUBLIC, now_s=TIMESTAMP_S + 300)
    verify(BODY, headers, V1A_PUBLIC, now_s=TIMESTAMP_S - 300)
    message = _refused("too_old", BODY, headers, V1A_PUBLIC, now_s=TIMESTAMP_S + 301)
    assert message == "webhook-timestamp is 301 s old, over the 300 s allowed"
    message = _refused("too_new", BODY, headers, V1A_PUBLIC, now_s=TIMESTAMP_S - 400)
    assert message == "webhook-timestamp is 400 s ahead, over the 300 s allowed"
    verify(BODY, headers, V1A_PUBLIC, now_s=TIMESTAMP_S + 3600, tolerance_s=3600)
    # without now_s, the time now: a 2021 timestamp is long past
    _refused("too_old", BODY, headers, V1A_PUBLIC)


@pytest.mark.parametrize("now_s", [float("nan"), float("inf"), float("-inf")])
def test_a_now_that_is_not_a_time_is_the_callers_error(now_s: float) -> None:
    """``now_s`` NaN would pass both age comparisons (any timestamp, a replay from 1970
    too): like a bad tolerance it is a ValueError, never a pass."""
    with pytest.raises(ValueError, match="now_s"):
        verify(BODY, _headers(V1A_SIGNATURE, timestamp="1"), V1A_PUBLIC, now_s=now_s)


@pytest.mark.parametrize(
    ("headers", "check", "message"),
    [
        ({}, "headers", "webhook-id, webhook-timestamp, webhook-signature"),
        ({"webhook-id": MSG_ID, "webhook-timestamp": "1"}, "headers", "webhook-signature"),
        (_headers(V1A_SIGNATURE, msg_id=""), "headers", "missing header: webhook-id"),
        (_headers(""), "headers", "webhook-signature"),
        (_headers(V1A_SIGNATURE, timestamp="1614265330.5"), "timestamp", "whole number"),
        (_headers(V1A_SIGNATURE, timestamp="-1614265330"), "timestamp", "whole number"),
        (_headers(V1A_SIGNATURE, timestamp="١٦١٤٢٦٥٣٣٠"), "timestamp", "whole number"),
        (_headers(V1A_SIGNATURE, timestamp="9" * 40), "timestamp", "whole number"),
        (_headers("v1a"), "signature", "no v1a"),
        (_headers("v1a,"), "signature", "no v1a"),
        (_headers("v1a,!!!notbase64"), "signature", "no v1a"),
        (_headers("v1a,AAAA"), "signature", "no v1a"),  # base64 of 3 bytes, not 64
        (_headers("v1a,é"), "signature", "no v1a"),
        (_headers(" , ,,v1a v1a,,"), "signature", "no v1a"),
        ({**_headers(V1A_SIGNATURE), "webhook-id": 42}, "headers", "webhook-id"),
    ],
)
def test_malformed_headers_are_refused_by_name(
    headers: dict[str, Any], check: str, message: str
) -> None:
    """Missing, empty or malformed headers raise InvalidSignature naming what is wrong."""
    assert message in _refused(check, BODY, headers, V1A_PUBLIC, now_s=TIMESTAMP_S)


_TEXT = st.text(max_size=120)
_HEADER_VALUE = st.one_of(
    _TEXT,
    st.sampled_from([MSG_ID, str(TIMESTAMP_S), V1A_SIGNATURE, V1_SIGNATURE]),
    st.binary(max_size=60),
    st.integers(),
    st.none(),
    st.lists(_TEXT, max_size=2).map(" ".join),
    st.lists(
        st.sampled_from(["v1", "v1a", "v2", ",", " ", "=", "AAAA", V1A_SIGNATURE]), max_size=6
    ).map("".join),
)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    headers=st.dictionaries(
        st.one_of(st.sampled_from(["webhook-id", "Webhook-Timestamp", "webhook-signature"]), _TEXT),
        _HEADER_VALUE,
        max_size=5,
    ),
    body=st.one_of(st.binary(max_size=64), _TEXT),
)
def test_any_request_raises_only_invalid_signature(headers: dict[Any, Any], body: Any) -> None:
    """Whatever the headers and body hold, verify returns or raises InvalidSignature, with
    one of its documented checks; nothing else escapes it."""
    for key in (V1A_PUBLIC, V1_SECRET):
        assert _failed_check(body, headers, key) in (None, *InvalidSignature.CHECKS)


# Ed25519 points of small order (the identity, and one of order 8) as whpk_ keys: with one,
# R = identity and S = 0 "verifies" any message, so a receiver holding one would accept
# anything.
_SMALL_ORDER = [
    bytes([1]) + bytes(31),
    (2707385501144840649318225287225658788936804267575313519463743609750303402022).to_bytes(
        32, "little"
    ),
]


@pytest.mark.parametrize("raw", _SMALL_ORDER)
def test_a_public_key_of_small_order_is_refused(raw: bytes) -> None:
    """A whpk_ key that is a point of small order is a ValueError, never a key that a forged
    signature (the identity and 0) passes for every body."""
    key = "whpk_" + base64.b64encode(raw).decode()
    forged = "v1a," + base64.b64encode(bytes([1]) + bytes(63)).decode()
    with pytest.raises(ValueError, match="small order"):
        verify(b"anything", _headers(forged), key, now_s=TIMESTAMP_S)


def _failed_check(body: Any, headers: Any, key: str) -> str | None:
    try:
        verify(body, headers, key, now_s=TIMESTAMP_S)
    except InvalidSignature as exc:
        return exc.check
    return None


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (generate_signing_key(), "whpk_ public key"),
        ("whpk_AAAA", "32 bytes"),
        ("whpk_not base64", "base64"),
        ("whsec_c2hvcnQ=", "whsec_ secret"),  # a 5-byte key
        ("pk_live_123", "whsec_ secret"),
        ([], "needs a key"),
    ],
    # Named, not by value: a generated key would name the case differently in each xdist worker.
    ids=["signing key", "whpk short", "whpk not base64", "whsec short", "no prefix", "no key"],
)
def test_a_wrong_key_is_the_callers_error(key: Any, message: str) -> None:
    """A key that is none (a whsk_ signing key included: it stays with the sender) raises
    ValueError before the request is looked at."""
    with pytest.raises(ValueError, match=message):
        verify(BODY, _headers(V1A_SIGNATURE), key, now_s=TIMESTAMP_S)


def test_verify_and_its_error_are_the_package_api() -> None:
    """``dispatcher.verify`` is the function and ``InvalidSignature`` a DispatcherError."""
    assert dispatcher.verify is verify
    assert issubclass(InvalidSignature, dispatcher.DispatcherError)
    assert {"verify", "InvalidSignature"} <= set(dispatcher.__all__)
