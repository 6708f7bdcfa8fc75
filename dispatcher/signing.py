"""Standard Webhooks signatures (https://www.standardwebhooks.com/), pure and IO-free.

A secret is ``whsec_`` followed by the base64 of its key. The ``webhook-signature`` header
carries one ``v1,<base64 HMAC-SHA256>`` per active secret (space-separated), so a receiver
holding either the old or the new secret accepts deliveries during a rotation.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import secrets as _random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SECRET_PREFIX", "generate_secret", "sign", "valid_secret"]

SECRET_PREFIX = "whsec_"  # noqa: S105  # a prefix, not a secret
_MIN_KEY_BYTES = 24
_MAX_KEY_BYTES = 64
_GENERATED_KEY_BYTES = 32


def generate_secret() -> str:
    """A new ``whsec_`` secret holding 32 random bytes."""
    key = _random.token_bytes(_GENERATED_KEY_BYTES)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def sign(msg_id: str, timestamp_s: int, body: bytes, secrets: Sequence[str]) -> str:
    """The ``webhook-signature`` header value: one ``v1,<sig>`` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    if len(secrets) == 1:  # the usual case, on the hot path
        digest = hmac.digest(_key(secrets[0]), signed, "sha256")
        return "v1," + base64.b64encode(digest).decode("ascii")
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(_key(secret), signed, "sha256")).decode("ascii")
        for secret in secrets
    )


def valid_secret(secret: str) -> bool:
    """Whether ``secret`` is ``whsec_<base64>`` with a key of 24 to 64 bytes."""
    try:
        key = _key(secret)
    except ValueError:
        return False
    return _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES


@functools.lru_cache(maxsize=4096)
def _key(secret: str) -> bytes:
    """The HMAC key of a secret; cached, since every delivery to a webhook uses the same one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret has an empty key")
    return key
