"""Standard Webhooks signatures, checked with the reference verifier from PyPI."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dispatcher.signing import generate_secret, sign, valid_secret

BODY = b'{"order_id": 42, "note": "caf\xc3\xa9"}'


def _headers(msg_id: str, timestamp_s: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": signature,
    }


def test_reference_verifier_accepts_a_signature() -> None:
    """The standardwebhooks verifier accepts a delivery signed with one secret."""
    secret = generate_secret()
    now_s = int(time.time())
    signature = sign("msg_1", now_s, BODY, [secret])
    assert signature.startswith("v1,")
    assert Webhook(secret).verify(BODY, _headers("msg_1", now_s, signature)) == {
        "order_id": 42,
        "note": "café",
    }


def test_both_secrets_verify_during_rotation() -> None:
    """During a rotation the header carries one signature per secret and each secret verifies."""
    old, new = generate_secret(), generate_secret()
    now_s = int(time.time())
    signature = sign("msg_2", now_s, BODY, [new, old])
    assert len(signature.split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(BODY, _headers("msg_2", now_s, signature))


def test_tampering_is_detected() -> None:
    """A changed body, id or timestamp no longer verifies."""
    secret = generate_secret()
    now_s = int(time.time())
    signature = sign("msg_3", now_s, BODY, [secret])
    hook = Webhook(secret)
    with pytest.raises(WebhookVerificationError):
        hook.verify(BODY + b" ", _headers("msg_3", now_s, signature))
    with pytest.raises(WebhookVerificationError):
        hook.verify(BODY, _headers("msg_4", now_s, signature))
    with pytest.raises(WebhookVerificationError):
        hook.verify(BODY, _headers("msg_3", now_s + 1, signature))


def test_known_vector() -> None:
    """The signature matches the reference implementation's own signer for a fixed input."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105  # the published test vector
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, [secret]) == expected


def test_generated_secrets_are_valid_and_distinct() -> None:
    """Generated secrets are whsec_ plus 32 random bytes, never repeating."""
    secrets = {generate_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert valid_secret(secret)
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32


@pytest.mark.parametrize(
    "secret",
    [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_",  # empty key
        "whsec_not base64!!",
        "whsec_" + base64.b64encode(b"k" * 23).decode(),  # too short
        "whsec_" + base64.b64encode(b"k" * 65).decode(),  # too long
    ],
)
def test_invalid_secrets_are_rejected(secret: str) -> None:
    """valid_secret refuses anything but whsec_ and base64 of a 24 to 64 byte key."""
    assert not valid_secret(secret)


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_%%%", "whsec_"])
def test_sign_raises_for_a_malformed_secret(secret: str) -> None:
    """Signing with a secret that is not whsec_<base64> raises ValueError."""
    with pytest.raises(ValueError, match=r"whsec_|empty"):
        sign("msg", 1, b"{}", [secret])


def test_boundary_key_sizes_are_valid() -> None:
    """Keys of exactly 24 and 64 bytes are accepted."""
    for size in (24, 64):
        assert valid_secret("whsec_" + base64.b64encode(b"k" * size).decode())
