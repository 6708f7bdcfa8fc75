"""The canary of ``security.encryption_keys``: a known text sealed with the key that seals the
deployment's webhook secrets (``keys.encryption`` on shard 0).

A daemon checks it at start (``startup``): with no key, or keys none of which is the canary's,
it refuses to start (one line naming the key id) instead of sending deliveries it cannot sign.
Writers check it before writing a webhook (``guard``), so a process without the key never
writes plain-text secrets into an encrypted deployment; a writer with keys marks it when there
is none, so no daemon without their key starts on its sealed records. ``dispatcher rekey``
re-marks it with the first key once every record is sealed with it.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Final, cast

import orjson

from dispatcher.crypto import Keyring, Undecryptable
from dispatcher.errors import EncryptionKeyMissing
from dispatcher.model import SEALED_FIELDS, SEALED_VALUES
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from dispatcher.queue.store import Store

CANARY: Final = b"dispatcher"
CANARY_AAD: Final = b"dispatcher.canary"
#: How long a writer trusts the canary it read (a daemon with keys may mark it meanwhile).
GUARD_MAX_AGE_S: Final = 60.0
KEY_NAME: Final = "security.encryption_keys"
#: What a deployment without keys holds in plain text (the daemon's start-up warning).
PLAIN_WITHOUT_KEY: Final = (
    *SEALED_FIELDS,
    *(f"{name}.{'*' if keys is None else '|'.join(keys)}" for name, keys in SEALED_VALUES.items()),
)

#: Redis client -> monotonic time of its last good read of the canary.
_guarded: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()


async def read_kid(store: Store) -> tuple[str, str] | None:
    """The canary's key id and sealed check, or None when the deployment has none."""
    raw = await cast("Awaitable[bytes | None]", store.redis.get(store.home.keys.encryption))
    if raw is None:
        return None
    canary = orjson.loads(raw)
    return str(canary["kid"]), str(canary["check"])


async def mark(store: Store, keyring: Keyring, *, replace: bool = False) -> bool:
    """Record the keyring's first key as the one sealing secrets (only if none is recorded,
    unless ``replace``: rekey, once every record is sealed with it); False when another
    process recorded one first."""
    value = orjson.dumps({"kid": keyring.current_kid, "check": keyring.seal(CANARY, CANARY_AAD)})
    return bool(await store.redis.set(store.home.keys.encryption, value, nx=not replace))


def problem(canary: tuple[str, str] | None, keyring: Keyring | None) -> str | None:
    """Why a process with ``keyring`` cannot use this deployment's secrets (one line, naming
    the key id), or None."""
    if canary is None:
        return None
    kid, check = canary
    if keyring is None:
        return f"{KEY_NAME}: Redis holds webhook secrets encrypted with key {kid}; configure it"
    if kid not in keyring.kids:
        return (
            f"{KEY_NAME}: Redis holds webhook secrets encrypted with key {kid}, which is not "
            f"configured (configured: {', '.join(keyring.kids)})"
        )
    try:
        keyring.open(check, CANARY_AAD)
    except Undecryptable:
        return f"{KEY_NAME}: key {kid} does not decrypt the canary in Redis"
    return None


async def startup(store: Store) -> str | None:
    """The daemon's check: the problem that must stop it, or None (a keyed process on a
    deployment without a canary records its first key: a daemon at start, a writer before
    its first sealed write)."""
    with redis_errors():
        canary = await read_kid(store)
        found = problem(canary, store.keyring)
        keyring = store.keyring
        # a daemon starting at once may record its key first: then that key is checked
        if found is None and canary is None and keyring and not await mark(store, keyring):
            found = problem(await read_kid(store), keyring)
    return found


async def guard(store: Store) -> None:
    """Before writing a webhook: ``EncryptionKeyMissing`` when the deployment's secrets are
    sealed with a key this process lacks (read at most once a minute per connection)."""
    client = store.redis
    if time.monotonic() - _guarded.get(client, float("-inf")) < GUARD_MAX_AGE_S:
        return
    found = await startup(store)  # a sealed write marks the deployment as encrypted
    if found is not None:
        raise EncryptionKeyMissing(found)
    _guarded[client] = time.monotonic()
