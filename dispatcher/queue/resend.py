"""Sending again on request: the test-send slot of a webhook (one a second across every
process) and the retry of an existing job (``retry_job.lua``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.queue.records import redis_errors

if TYPE_CHECKING:
    from dispatcher.queue.store import Store

#: A webhook takes at most one test send per this many milliseconds, across every process.
TEST_SEND_INTERVAL_MS = 1000


async def take_test_slot(store: Store, webhook_id: str) -> bool:
    """True when this caller may test ``webhook_id`` now (``SET NX PX`` on its
    ``testsend`` key, in its shard); False when another test took the slot within the last
    ``TEST_SEND_INTERVAL_MS``."""
    store = store.of_webhook(webhook_id)
    with redis_errors():
        taken = await store.redis.set(
            store.keys.test_send(webhook_id), b"1", nx=True, px=TEST_SEND_INTERVAL_MS
        )
    return bool(taken)
