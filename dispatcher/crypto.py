"""Sealing secrets at rest: AES-256-GCM under the configured ``security.encryption_keys``.

A sealed value is the text ``enc1.<kid>.<urlsafe base64 of nonce | ciphertext | tag>``: ``kid``
names the key (8 hex digits derived from the key itself, so the order keys are configured in
never matters and no key is ever shown), the nonce is 12 random bytes per seal, and the
associated data binds the value to its record (a webhook's sealed blob pasted onto another
webhook does not open). The first key of a ``Keyring`` seals, every key opens, so keys rotate:
add a key, make it first, re-seal (``dispatcher rekey``), drop the old one.

Pure: no Redis, no I/O. ``Keyring.open_cached`` keeps what it opened by the sealed text (new at
every write), so a worker decoding the same webhook for every claim pays a dict lookup.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX: Final = "enc1"
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32
#: Opened values kept per keyring (a worker sees each webhook's current blob many times), and
#: the bytes they may hold (a webhook's headers reach 128 KiB: a count alone would not bound it).
CACHE_LIMIT: Final = 65_536
CACHE_BYTES: Final = 64 * 1024 * 1024


class Undecryptable(Exception):  # noqa: N818 - a state, like NotFound
    """No configured key opens this value: its key is not configured, or it was tampered with
    (or moved to another record). ``kid`` names the key it was sealed with ("" if unreadable)."""

    def __init__(self, kid: str, reason: str) -> None:
        super().__init__(f"sealed with key {kid or '?'}: {reason}")
        self.kid = kid
        self.reason = reason


def key_id(key: bytes) -> str:
    """The key's public name: not reversible, stable across processes and config orders."""
    return hashlib.sha256(b"dispatcher key id\0" + key).hexdigest()[:8]


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX + ".")


def kid_of(token: str) -> str:
    """The key id a sealed value names ("" when it is not one)."""
    parts = token.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == PREFIX else ""  # noqa: PLR2004


class Keyring:
    """The configured keys: ``seal`` with the first, ``open`` with whichever the value names."""

    __slots__ = ("_cache", "_cache_bytes", "_ciphers", "current_kid", "kids")

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        if any(len(k) != KEY_BYTES for k in keys):
            raise ValueError("keys are 32 bytes")
        self._ciphers = {key_id(k): AESGCM(k) for k in keys}
        self.kids: tuple[str, ...] = tuple(key_id(k) for k in keys)
        self.current_kid = self.kids[0]
        self._cache: dict[tuple[str, bytes], bytes] = {}
        self._cache_bytes = 0

    @classmethod
    def of(cls, keys: tuple[bytes, ...]) -> Keyring | None:
        """The keyring of a config's keys; None without keys (secrets stay plain text)."""
        return cls(keys) if keys else None

    def __repr__(self) -> str:
        return f"Keyring(kids={list(self.kids)})"

    def seal(self, plain: bytes, aad: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.current_kid].encrypt(nonce, plain, aad)
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
        return f"{PREFIX}.{self.current_kid}.{body}"

    def open(self, token: str, aad: bytes) -> bytes:
        """The plain bytes; ``Undecryptable`` when no configured key opens them."""
        kid = kid_of(token)
        if not kid:
            raise Undecryptable("", "not a sealed value")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise Undecryptable(kid, f"key {kid} is not configured")
        body = token.split(".", 2)[2]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise Undecryptable(kid, f"key {kid} does not open it") from None

    def open_cached(self, token: str, aad: bytes) -> bytes:
        """``open``, remembered: the hot path decodes the same blob for every claimed job."""
        found = self._cache.get((token, aad))
        if found is None:
            found = self.open(token, aad)
            size = len(token) + len(aad) + len(found)
            if len(self._cache) >= CACHE_LIMIT or self._cache_bytes + size > CACHE_BYTES:
                self._cache.clear()  # rare: one re-open per webhook after
                self._cache_bytes = 0
            self._cache[(token, aad)] = found
            self._cache_bytes += size
        return found

    def is_current(self, token: str) -> bool:
        """Sealed with the first key (``dispatcher rekey`` leaves it alone)."""
        return kid_of(token) == self.current_kid
