"""``dispatcher rekey``: seal every webhook's secrets with the first configured key.

Each shard's webhook records are scanned (HSCAN, 500 at a time); a record in plain text, or
sealed with another configured key, is written again through ``webhooks.reseal`` (the same
compare-and-set as every webhook change, so a concurrent PATCH or rotation is never undone,
and ``updated_at`` stays). A record no configured key opens is counted and named, never
written. Once every record is current, the canary (``encryption.py``) is re-marked with the
first key, so daemons started without the old keys then accept the deployment.

"Every record is current" is checked by reading them all again after the pass: meanwhile
another writer may have sealed some with another first key (a second ``rekey`` with another
key, a daemon not yet moved to the new key). Those the keys open are sealed again (up to
:data:`MAX_CHECKS` times); those they do not are counted unreadable and named, and the canary
stays, so the operator learns of them before dropping a key.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

import orjson

from dispatcher.crypto import is_sealed
from dispatcher.errors import NotFound
from dispatcher.model import Webhook
from dispatcher.queue import encryption, webhooks
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable

    from dispatcher.crypto import Keyring
    from dispatcher.queue.store import Store

SCAN_COUNT: Final = 500
MAX_LISTED: Final = 20  # unreadable webhook ids named in the report
MAX_CHECKS: Final = 3  # reads of every record after the pass, before the canary is re-marked


@dataclass(slots=True)
class Report:
    key_id: str
    dry_run: bool
    webhooks: int = 0
    encrypted_from_plaintext: int = 0
    rekeyed: int = 0
    already_current: int = 0
    unreadable: int = 0
    unreadable_ids: list[str] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "webhooks": self.webhooks,
            "encrypted_from_plaintext": self.encrypted_from_plaintext,
            "rekeyed": self.rekeyed,
            "already_current": self.already_current,
            "unreadable": self.unreadable,
            "unreadable_ids": self.unreadable_ids,
            "dry_run": self.dry_run,
        }


def _kind(raw: bytes, keyring: Keyring) -> str:
    """What rekey does with a stored record: "current", "plaintext", "rekey" or "unreadable"."""
    sealed = orjson.loads(raw).get("sealed")
    if not is_sealed(sealed):
        return "plaintext"
    if keyring.is_current(sealed):
        return "current"
    return "unreadable" if Webhook.decode(raw, keyring).sealed is not None else "rekey"


async def run(store: Store, *, dry_run: bool = False) -> Report:
    """Re-seal every webhook under the store's first key (``store.keyring`` must be set)."""
    keyring = store.keyring
    if keyring is None:
        raise ValueError("rekey needs security.encryption_keys")
    report = Report(keyring.current_kid, dry_run)
    async for shard, hook_id, raw in _records(store):
        await _one(shard, hook_id, raw, report)
    if dry_run or report.unreadable:
        return report
    for check in range(MAX_CHECKS):
        stale = [found async for found in _records(store) if _kind(found[2], keyring) != "current"]
        if not stale:
            with redis_errors():
                await encryption.mark(store, keyring, replace=True)
            return report
        for shard, hook_id, raw in stale:  # sealed meanwhile by a writer with another key
            if check + 1 == MAX_CHECKS or _kind(raw, keyring) == "unreadable":
                _unreadable(report, hook_id)
                continue
            with suppress(NotFound):  # deleted meanwhile
                if not await webhooks.reseal(shard, hook_id):
                    _unreadable(report, hook_id)
        if report.unreadable:
            return report
    return report


async def _records(store: Store) -> AsyncIterator[tuple[Store, str, bytes]]:
    """Every webhook record of every shard, with its shard (HSCAN, ``SCAN_COUNT`` a page)."""
    with redis_errors():
        shards = await store.all_shards()
    for shard in shards:
        cursor = 0
        while True:
            with redis_errors():
                cursor, page = await cast(
                    "Awaitable[tuple[int, dict[bytes, bytes]]]",
                    shard.redis.hscan(shard.keys.webhooks, cursor, count=SCAN_COUNT),
                )
            for hook_id, raw in page.items():
                yield shard, hook_id.decode(), raw
            if cursor == 0:
                break


def _unreadable(report: Report, hook_id: str) -> None:
    report.unreadable += 1
    if len(report.unreadable_ids) < MAX_LISTED:
        report.unreadable_ids.append(hook_id)


async def _one(store: Store, hook_id: str, raw: bytes, report: Report) -> None:
    keyring = cast("Keyring", store.keyring)
    kind = _kind(raw, keyring)
    report.webhooks += 1
    if kind == "unreadable":
        _unreadable(report, hook_id)
        return
    if kind == "current":
        report.already_current += 1
        return
    if not report.dry_run:
        try:
            written = await webhooks.reseal(store, hook_id)
        except NotFound:  # deleted meanwhile
            report.webhooks -= 1
            return
        if not written:  # sealed meanwhile with a key this run lacks (another rekey)
            _unreadable(report, hook_id)
            return
    if kind == "plaintext":
        report.encrypted_from_plaintext += 1
    else:
        report.rekeyed += 1
