"""Standard Webhooks signatures (https://www.standardwebhooks.com/), pure and IO-free.

Two schemes sign the same bytes, ``{webhook-id}.{webhook-timestamp}.{body}``:

- ``v1`` (symmetric): a secret is ``whsec_`` followed by the base64 of its HMAC-SHA256 key; the
  signature is ``v1,<base64 HMAC>``.
- ``v1a`` (asymmetric): a signing key is ``whsk_`` followed by the base64 of an Ed25519 secret
  key, 64 bytes (the 32-byte seed, then its public key, as Svix and Go write it; the 32-byte
  seed alone is read too); receivers hold only its public key, ``whpk_`` + base64 of 32 bytes.
  The signature is ``v1a,<base64 of the 64-byte Ed25519 signature>``.

The ``webhook-signature`` header carries one signature per active key (space-separated), so a
receiver holding either the old or the new key accepts deliveries during a rotation, even one
from ``v1`` to ``v1a`` (``verifier.py`` checks both; Standard Webhooks libraries skip the
``v1a`` entries and check the ``v1`` ones).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import secrets as _random
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "PUBLIC_KEY_PREFIX",
    "SCHEMES",
    "SECRET_PREFIX",
    "SIGNING_KEY_PREFIX",
    "generate_key",
    "generate_secret",
    "generate_signing_key",
    "hmac_key",
    "public_key",
    "public_key_of",
    "scheme_of",
    "sign",
    "valid_ed25519_signature",
    "valid_secret",
    "valid_signing_key",
]

SECRET_PREFIX = "whsec_"  # noqa: S105  # a prefix, not a secret
SIGNING_KEY_PREFIX: Final = "whsk_"
PUBLIC_KEY_PREFIX: Final = "whpk_"
#: The signature schemes, by the prefix of the key that signs with each.
SCHEMES: Final = {"v1": SECRET_PREFIX, "v1a": SIGNING_KEY_PREFIX}
_MIN_KEY_BYTES = 24
_MAX_KEY_BYTES = 64
_GENERATED_KEY_BYTES = 32
_SEED_BYTES = 32  # an Ed25519 seed, and a public key
_ED25519_SIGNATURE_BYTES = 64
_P = 2**255 - 19
_Y_MASK = 2**255 - 1  # the y coordinate of an encoded point (the top bit is x's sign)
_Y_ORDER_8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
#: The y of every point of small order (1, 2, 4, 8), and their encodings past p (libsodium
#: refuses the same): a public key there makes R = identity, S = 0 a valid signature of anything.
_WEAK_Y: Final = frozenset({0, 1, _P - 1, _Y_ORDER_8, _P - _Y_ORDER_8, _P, _P + 1})


def generate_secret() -> str:
    """A new ``whsec_`` secret holding 32 random bytes."""
    key = _random.token_bytes(_GENERATED_KEY_BYTES)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def generate_signing_key() -> str:
    """A new ``whsk_`` Ed25519 signing key: a random seed and its public key, 64 bytes."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    return SIGNING_KEY_PREFIX + base64.b64encode(seed + _raw_public(private)).decode("ascii")


def generate_key(scheme: str) -> str:
    """A new key for ``scheme`` (``v1``: a ``whsec_`` secret; ``v1a``: a ``whsk_`` key)."""
    return generate_signing_key() if scheme == "v1a" else generate_secret()


def scheme_of(key: str) -> str:
    """The scheme a key signs with: ``v1a`` for a ``whsk_`` key, else ``v1``."""
    return "v1a" if key.startswith(SIGNING_KEY_PREFIX) else "v1"


def sign(msg_id: str, timestamp_s: int, body: bytes, secrets: Sequence[str]) -> str:
    """The ``webhook-signature`` header value: one signature per key (``v1,<sig>`` for a
    ``whsec_`` secret, ``v1a,<sig>`` for a ``whsk_`` key), space-separated, in their order."""
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    if len(secrets) == 1 and not secrets[0].startswith(SIGNING_KEY_PREFIX):
        # the usual case, on the hot path: one v1 secret
        digest = hmac.digest(_key(secrets[0]), signed, "sha256")
        return "v1," + base64.b64encode(digest).decode("ascii")
    return " ".join(_signature(secret, signed) for secret in secrets)


def _signature(secret: str, signed: bytes) -> str:
    if secret.startswith(SIGNING_KEY_PREFIX):
        return "v1a," + base64.b64encode(_private_key(secret).sign(signed)).decode("ascii")
    return "v1," + base64.b64encode(hmac.digest(_key(secret), signed, "sha256")).decode("ascii")


def valid_secret(secret: str) -> bool:
    """Whether ``secret`` is ``whsec_<base64>`` with a key of 24 to 64 bytes."""
    try:
        key = _key(secret)
    except ValueError:
        return False
    return _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES


def valid_signing_key(key: str) -> bool:
    """Whether ``key`` is ``whsk_<base64>`` of an Ed25519 seed (32 bytes), or of the seed and
    its own public key (64 bytes)."""
    try:
        _private_key(key)
    except ValueError:
        return False
    return True


def public_key_of(signing_key: str) -> str:
    """The ``whpk_`` public key of a ``whsk_`` signing key (``ValueError`` if it is not one)."""
    return _public_of(signing_key)


@functools.lru_cache(maxsize=4096)
def _public_of(signing_key: str) -> str:
    public = _raw_public(_private_key(signing_key))
    return PUBLIC_KEY_PREFIX + base64.b64encode(public).decode("ascii")


@functools.lru_cache(maxsize=4096)
def public_key(key: str) -> Ed25519PublicKey:
    """The Ed25519 public key of a ``whpk_`` key (cached); ``ValueError`` names what is
    wrong."""
    raw = _decoded(key, PUBLIC_KEY_PREFIX, "a public key")
    if len(raw) != _SEED_BYTES:
        raise ValueError(f"a whpk_ public key holds 32 bytes, not {len(raw)}")
    if int.from_bytes(raw, "little") & _Y_MASK in _WEAK_Y:
        raise ValueError("a whpk_ public key of small order (it would accept forged signatures)")
    return Ed25519PublicKey.from_public_bytes(raw)


def valid_ed25519_signature(signature: bytes) -> bool:
    """Whether ``signature`` has the length of an Ed25519 signature."""
    return len(signature) == _ED25519_SIGNATURE_BYTES


@functools.lru_cache(maxsize=4096)
def _key(secret: str) -> bytes:
    """The HMAC key of a secret; cached, since every delivery to a webhook uses the same one."""
    key = _decoded(secret, SECRET_PREFIX, "a webhook secret")
    if not key:
        raise ValueError("a webhook secret has an empty key")
    return key


#: The HMAC key of a ``whsec_`` secret (``ValueError`` if it is not one).
hmac_key = _key


@functools.lru_cache(maxsize=4096)
def _private_key(key: str) -> Ed25519PrivateKey:
    """The Ed25519 key of a ``whsk_`` key; cached, as parsing it costs more than a signature."""
    raw = _decoded(key, SIGNING_KEY_PREFIX, "a signing key")
    if len(raw) not in (_SEED_BYTES, 2 * _SEED_BYTES):
        raise ValueError(f"a whsk_ signing key holds 64 bytes (or a 32-byte seed), not {len(raw)}")
    private = Ed25519PrivateKey.from_private_bytes(raw[:_SEED_BYTES])
    if len(raw) > _SEED_BYTES and raw[_SEED_BYTES:] != _raw_public(private):
        raise ValueError("a whsk_ signing key's last 32 bytes are not its seed's public key")
    return private


def _decoded(key: str, prefix: str, what: str) -> bytes:
    """The bytes of ``prefix`` + base64; ``ValueError`` says what ``what`` should be."""
    if not key.startswith(prefix):
        raise ValueError(f"{what} starts with {prefix!r}")
    try:
        return base64.b64decode(key[len(prefix) :], validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: text that is not ASCII
        raise ValueError(f"{what} is {prefix!r} followed by base64") from exc


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
