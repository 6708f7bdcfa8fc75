"""``dispatcher.verify``: a receiver's check of a delivery's Standard Webhooks signature, for
``v1`` (a ``whsec_`` secret, HMAC-SHA256) and ``v1a`` (a ``whpk_`` Ed25519 public key).

Pure and IO-free, for receivers written in Python: the reference libraries check ``v1`` only
(``signing.py`` says how both schemes sign). Every way a delivery can be wrong raises
``InvalidSignature`` naming the check it failed; a wrong *key* (the receiver's configuration,
not the request) raises ``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import time
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature as _BadEd25519

from dispatcher import signing
from dispatcher.errors import InvalidSignature

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["DEFAULT_TOLERANCE_S", "verify"]

#: How far a delivery's ``webhook-timestamp`` may be from now, either way (Standard Webhooks'
#: five minutes): an older delivery is refused as a possible replay.
DEFAULT_TOLERANCE_S: Final = 300.0
_HEADERS: Final = ("webhook-id", "webhook-timestamp", "webhook-signature")
_MAX_TIMESTAMP_DIGITS: Final = 15
#: The most distinct ``v1a`` entries checked (each costs an Ed25519 verification per key,
#: ~1000 times an HMAC): a delivery carries one per key in use, a forged header may carry
#: thousands.
MAX_V1A_ENTRIES: Final = 16


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    key: str | Sequence[str],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now_s: float | None = None,
) -> None:
    """Return if ``headers`` carry a valid signature of ``body`` by ``key``, else raise
    ``InvalidSignature`` (its ``check`` and message say which check failed).

    ``body`` is the request body exactly as received. ``headers`` is any mapping of the
    request's headers (names in any case). ``key`` is the webhook's ``whsec_`` secret (checks
    the ``v1`` signatures) or its ``whpk_`` public key (checks ``v1a``), or several keys: any
    one matching signature passes. ``webhook-timestamp`` must be within ``tolerance_s`` seconds
    of ``now_s`` (default: the time now; NaN or infinite is a ``ValueError``). A malformed
    key raises ``ValueError``, as does a ``whsk_`` signing key, which stays with the sender.
    """
    if not math.isfinite(tolerance_s) or tolerance_s < 0:
        raise ValueError("tolerance_s must be a finite number of seconds, 0 or more")
    if now_s is not None and not math.isfinite(now_s):  # NaN would pass both age checks
        raise ValueError("now_s must be a finite time in seconds since 1970")
    secrets, publics = _keys(key)
    found = _headers(headers)
    msg_id, stamp, header = (found.get(name, "") for name in _HEADERS)
    missing = [name for name in _HEADERS if not found.get(name)]
    if missing:
        raise InvalidSignature("headers", f"missing header: {', '.join(missing)}")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= _MAX_TIMESTAMP_DIGITS):
        raise InvalidSignature(
            "timestamp", "webhook-timestamp is not a whole number of seconds since 1970"
        )
    age_s = (time.time() if now_s is None else now_s) - int(stamp)
    if age_s > tolerance_s:
        raise InvalidSignature(
            "too_old", f"webhook-timestamp is {age_s:.0f} s old, over the {tolerance_s:g} s allowed"
        )
    if -age_s > tolerance_s:
        raise InvalidSignature(
            "too_new",
            f"webhook-timestamp is {-age_s:.0f} s ahead, over the {tolerance_s:g} s allowed",
        )
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    signed = f"{msg_id}.{stamp}.".encode("utf-8", "surrogatepass") + raw
    if _matches(header, signed, secrets, publics):
        return
    wanted = " or ".join(version for version, keys in (("v1", secrets), ("v1a", publics)) if keys)
    raise InvalidSignature(
        "signature", f"no {wanted} signature in webhook-signature matches the key"
    )


def _keys(key: str | Sequence[str]) -> tuple[list[bytes], list[Ed25519PublicKey]]:
    """The HMAC keys and the Ed25519 public keys to check with."""
    keys = [key] if isinstance(key, str) else list(key)
    if not keys:
        raise ValueError("verify needs a key: the webhook's whsec_ secret or whpk_ public key")
    secrets: list[bytes] = []
    publics: list[Ed25519PublicKey] = []
    for one in keys:
        if not isinstance(one, str):
            raise TypeError("a key is a string: a whsec_ secret or a whpk_ public key")
        if one.startswith(signing.SIGNING_KEY_PREFIX):
            raise ValueError(
                "give verify the webhook's whpk_ public key (its public_key); "
                "the whsk_ signing key stays with the sender"
            )
        if one.startswith(signing.PUBLIC_KEY_PREFIX):
            publics.append(signing.public_key(one))
        elif signing.valid_secret(one):
            secrets.append(signing.hmac_key(one))
        else:
            raise ValueError(
                "a key is a whsec_ secret (base64 of 24 to 64 bytes) or a whpk_ public key"
            )
    return secrets, publics


def _headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """The three signature headers by lower-case name; a value that is not text is absent."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str):
            continue
        lower = name.lower()
        if lower in _HEADERS:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if isinstance(text, str):
                found[lower] = text.strip()
    return found


def _matches(
    header: str, signed: bytes, secrets: list[bytes], publics: list[Ed25519PublicKey]
) -> bool:
    """Whether an entry of the signature header (``version,base64``) matches a key; entries
    of other versions, malformed ones, and ``v1a`` ones past the first ``MAX_V1A_ENTRIES``
    distinct ones are skipped."""
    digests = [hmac.digest(secret, signed, "sha256") for secret in secrets]
    checked = {"v1": bool(digests), "v1a": bool(publics)}
    seen: set[str] = set()  # v1a entries tried
    for entry in header.split():
        version, _, text = entry.partition(",")
        if not checked.get(version):
            continue
        if version == "v1a":
            if entry in seen or len(seen) >= MAX_V1A_ENTRIES:
                continue
            seen.add(entry)
        try:
            signature = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):  # ValueError: text that is not ASCII
            continue
        if version == "v1":
            if any(hmac.compare_digest(signature, digest) for digest in digests):
                return True
        elif signing.valid_ed25519_signature(signature) and _ed25519_match(
            signature, signed, publics
        ):
            return True
    return False


def _ed25519_match(signature: bytes, signed: bytes, publics: list[Ed25519PublicKey]) -> bool:
    for public in publics:
        try:
            public.verify(signature, signed)
        except _BadEd25519:
            continue
        return True
    return False
