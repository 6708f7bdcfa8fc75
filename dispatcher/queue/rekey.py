"""``dispatcher rekey``: seal every webhook's secrets with the first configured key.

Each shard's webhook records are scanned (HSCAN, 500 at a time); a record in plain text, or
sealed with another configured key, is written again through ``webhooks.reseal`` (the same
compare-and-set as every webhook change, so a concurrent PATCH or rotation is never undone,
and ``updated_at`` stays). A record no configured key opens is counted and named, never
written. Once every record is current, the canary (``encryption.py``) is re-marked with the
first key, so daemons started without the old keys then accept the deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

import orjson

from dispatcher.crypto import is_sealed
from dispatcher.errors import NotFound
from dispatcher.model import Webhook
from dispatcher.queue import encryption, webhooks
from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from dispatcher.crypto import Keyring
    from dispatcher.queue.store import Store

SCAN_COUNT: Final = 500
MAX_LISTED: Final = 20  # unreadable webhook ids named in the report


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
                await _one(shard, hook_id.decode(), raw, report)
            if cursor == 0:
                break
    if not dry_run and report.unreadable == 0:
        with redis_errors():
            await encryption.mark(store, keyring, replace=True)
    return report


async def _one(store: Store, hook_id: str, raw: bytes, report: Report) -> None:
    keyring = cast("Keyring", store.keyring)
    kind = _kind(raw, keyring)
    report.webhooks += 1
    if kind == "unreadable":
        report.unreadable += 1
        if len(report.unreadable_ids) < MAX_LISTED:
            report.unreadable_ids.append(hook_id)
        return
    if kind == "current":
        report.already_current += 1
        return
    if not report.dry_run:
        try:
            await webhooks.reseal(store, hook_id)
        except NotFound:  # deleted meanwhile
            report.webhooks -= 1
            return
    if kind == "plaintext":
        report.encrypted_from_plaintext += 1
    else:
        report.rekeyed += 1
