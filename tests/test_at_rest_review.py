"""Secrets at rest, the review's regressions: two daemons starting at once with different
keys, and a header removed by a process that cannot open the webhook's sealed values."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import TYPE_CHECKING, cast

from dispatcher import Client
from dispatcher.crypto import Keyring, key_id
from dispatcher.model import MASK, Webhook
from dispatcher.queue import encryption
from dispatcher.queue.keys import Keys
from dispatcher.queue.store import Store

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from tests.helpers import ClusterServers


async def test_two_daemons_starting_at_once_with_different_keys_one_refuses(
    redis_url: str, prefix: str
) -> None:
    """Two daemons' start-up checks racing on a deployment without a canary: one records its
    key, the other is refused naming that key (not left running with a key that opens none of
    the webhooks the first one seals)."""
    key_a, key_b = os.urandom(32), os.urandom(32)
    a = Store.open(redis_url, prefix=prefix, keyring=Keyring((key_a,)))
    b = Store.open(redis_url, prefix=prefix, keyring=Keyring((key_b,)))
    try:
        problems = await asyncio.gather(encryption.startup(a), encryption.startup(b))
        canary = await encryption.read_kid(a)
    finally:
        await a.close()
        await b.close()
    assert canary is not None
    winner = 0 if canary[0] == key_id(key_a) else 1
    assert problems[winner] is None
    refused = problems[1 - winner]
    assert refused is not None
    assert f"encrypted with key {canary[0]}, which is not configured" in refused


async def test_a_header_removed_without_the_records_key_stays_removed(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> None:
    """A PATCH removing a header, made by a process whose keys do not open the webhook's
    sealed values, is not undone when a process with the key reads it: the header is gone
    from answers and from what deliveries would carry."""
    sealing = base64.b64encode(os.urandom(32)).decode()
    other = base64.b64encode(os.urandom(32)).decode()
    async with Client.from_url(redis_url, prefix, encryption_keys=[sealing]) as client:
        hook = await client.create_webhook(
            "acme", "http://127.0.0.1:9/h", headers={"X-Gone": "old-token", "Y": "w"}
        )
    async with Client.from_url(redis_url, prefix, encryption_keys=[other]) as keyless:
        patched = await keyless.update_webhook(hook["id"], headers={"Y": MASK})
        assert patched["headers"] == {"Y": MASK}
    async with Client.from_url(redis_url, prefix, encryption_keys=[sealing]) as client:
        assert (await client.get_webhook(hook["id"]))["headers"] == {"Y": MASK}
    raw = cast("bytes", await redis.hget(Keys(prefix).webhooks, hook["id"]))
    ring = Keyring((base64.b64decode(sealing),))
    assert Webhook.decode(raw, ring).headers == {"Y": "w"}


async def _rekey_three_shards(url: str, prefix: str) -> None:
    from dispatcher.queue import rekey, webhooks  # noqa: PLC0415

    key = os.urandom(32)
    plain = Store.open(url, prefix=prefix)
    keyed = Store.open(url, prefix=prefix, keyring=Keyring((key,)))
    try:
        await plain.adopt_layout(3)
        fields = {"tenant_id": "acme", "url": "http://127.0.0.1:9/h", "headers": {"X": "v"}}
        made = [await webhooks.create_webhook(plain, fields) for _ in range(12)]
        assert len({plain.of_webhook(h.id).shard for h in made}) == 3
        first, again = await rekey.run(keyed), await rekey.run(keyed)
        assert (first.encrypted_from_plaintext, again.already_current) == (12, 12)
        assert await encryption.read_kid(keyed) is not None
        for hook in made:
            shard = keyed.of_webhook(hook.id)
            raw = cast("bytes", await shard.redis.hget(shard.keys.webhooks, hook.id))
            assert b'"v"' not in raw
            assert hook.secret.encode() not in raw
            opened = Webhook.decode(raw, keyed.keyring)
            assert (opened.secret, opened.headers) == (hook.secret, {"X": "v"})
    finally:
        await plain.close()
        await keyed.close()


async def test_rekey_seals_every_shard(redis_url: str, prefix: str) -> None:
    """`rekey` on three shards seals every webhook of each (a second run finds all current)."""
    await _rekey_three_shards(redis_url, prefix)


async def test_rekey_seals_every_shard_of_a_cluster(cluster: ClusterServers, prefix: str) -> None:
    """The same on a Redis Cluster."""
    await _rekey_three_shards(cluster.url, prefix)
