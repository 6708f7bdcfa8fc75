"""Secrets at rest, the review's regressions: two daemons starting at once with different
keys, and a header removed by a process that cannot open the webhook's sealed values."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from typing import TYPE_CHECKING, cast

import pytest

from dispatcher import Client, InvalidField, verify
from dispatcher.crypto import Keyring, key_id
from dispatcher.model import MASK, Webhook
from dispatcher.queue import encryption
from dispatcher.queue.keys import Keys
from dispatcher.queue.store import Store
from tests.helpers import Daemon, eventually, log_events, stop_daemons
from tests.target import Target
from tests.test_at_rest import _env, _needles, _redis_holds, _started

if TYPE_CHECKING:
    from pathlib import Path

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
    await redis.delete(Keys(prefix).encryption)  # as if sealed by a process with another key
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


async def test_a_webhook_switched_to_v1a_while_sealed_delivers_both_signatures(
    redis_url: str, prefix: str, redis: aioredis.Redis, logs_dir: Path
) -> None:
    """With a key, a v1 webhook rotated to v1a (grace kept) is delivered by a real daemon with
    a v1 signature its old secret verifies and a v1a one its public key verifies, while Redis
    holds neither the whsec_ secret nor the whsk_ signing key, as text or as key bytes."""
    key = base64.b64encode(os.urandom(32)).decode()
    async with (
        Target() as target,
        Client.from_url(redis_url, prefix, encryption_keys=[key]) as client,
    ):
        hook = await client.create_webhook("acme", target.url("/h"))
        rotated = await client.rotate_secret(hook["id"], grace_s=3600, signature_scheme="v1a")
        public = cast("str", rotated["public_key"])
        daemon = Daemon(_env(redis_url, prefix, key), logs_dir / "v1a.log").start()
        try:
            await _started(daemon)
            await client.publish("acme", "order.paid", {"n": 1})
            await eventually(lambda: target.received, timeout_s=20, what="delivery")
        finally:
            await stop_daemons(daemon)
    [got] = target.received
    verify(got.body, dict(got.headers), hook["secret"])
    verify(got.body, dict(got.headers), public)
    signing = rotated["secret"]
    seed = base64.b64decode(signing.removeprefix("whsk_"))[:32]
    needles = [*_needles(hook["secret"]), signing.encode(), seed, base64.b64encode(seed)]
    assert await _redis_holds(redis, prefix, needles) == set()


async def test_rekey_beside_rotations_and_deletes(redis_url: str, prefix: str) -> None:
    """Rotations and deletes made while `rekey` runs all hold: each rotated webhook signs with
    the secret its rotation answered (the old one in its grace), each deleted one stays gone."""
    from dispatcher.queue import rekey, webhooks  # noqa: PLC0415
    from dispatcher.signing import generate_secret  # noqa: PLC0415

    key = os.urandom(32)
    plain = Store.open(redis_url, prefix=prefix)
    keyed = Store.open(redis_url, prefix=prefix, keyring=Keyring((key,)))
    try:
        fields = {"tenant_id": "acme", "url": "http://127.0.0.1:9/h"}
        made = [await webhooks.create_webhook(plain, fields) for _ in range(30)]
        new = {h.id: generate_secret() for h in made[::2]}
        gone = [h.id for h in made[1::2]]
        done = await asyncio.gather(
            rekey.run(keyed),
            *(webhooks.rotate_secret(keyed, i, s, 3600) for i, s in new.items()),
            *(webhooks.delete_webhook(keyed, i) for i in gone),
        )
        assert cast("rekey.Report", done[0]).unreadable == 0
        for hook in made:
            raw = await keyed.redis.hget(keyed.keys.webhooks, hook.id)
            if hook.id in gone:
                assert raw is None
                continue
            opened = Webhook.decode(cast("bytes", raw), keyed.keyring)
            assert opened.secrets(0) == [new[hook.id], hook.secret]
        assert (await rekey.run(keyed)).already_current == len(new)
    finally:
        await plain.close()
        await keyed.close()


async def test_mask_round_trip_edges(redis_url: str, prefix: str, redis: aioredis.Redis) -> None:
    """A MASK ("***") keeps a stored value only under its exact name: another case of the
    name, or a header removed and then sent back as "***", is a 422 naming the header, never
    its value, and a header re-added with a value stores that value."""
    key = base64.b64encode(os.urandom(32)).decode()
    async with Client.from_url(redis_url, prefix, encryption_keys=[key]) as client:
        hook = await client.create_webhook(
            "acme", "http://127.0.0.1:9/h", headers={"X-Token": "tok-S3cret"}
        )
        for sent in ({"x-token": MASK}, {"X-Token": MASK, "X-Other": MASK}):
            with pytest.raises(InvalidField) as bad:
                await client.update_webhook(hook["id"], headers=sent)
            assert "tok-S3cret" not in str(bad.value)
        assert (await client.update_webhook(hook["id"], headers={}))["headers"] == {}
        with pytest.raises(InvalidField, match="'X-Token' has no stored value to keep"):
            await client.update_webhook(hook["id"], headers={"X-Token": MASK})
        await client.update_webhook(hook["id"], headers={"X-Token": "tok-2"})
        await client.update_webhook(hook["id"], headers={"X-Token": MASK}, description="d")
    raw = cast("bytes", await redis.hget(Keys(prefix).webhooks, hook["id"]))
    assert b"tok-" not in raw
    ring = Keyring((base64.b64decode(key),))
    assert Webhook.decode(raw, ring).headers == {"X-Token": "tok-2"}


#: A process logging, in the console format, an exception raised in a frame whose locals hold
#: a secret and a header value (made at run time, so the source lines shown do not hold them).
CONSOLE_CRASH = """
import structlog
from dispatcher.logs import configure_logging
configure_logging("info", "console")
def deliver(headers):
    secret = "eulavTERCESPOT_cehw"[::-1]
    raise RuntimeError("boom")
try:
    deliver({"Authorization": "t3rc3S-rdh reraeB"[::-1]})
except RuntimeError:
    structlog.get_logger().exception("delivery.crashed", job_id="j1")
"""


def test_console_tracebacks_show_no_local_values() -> None:
    """The console log format prints an exception's traceback without the frames' local
    variables, which hold signing secrets and header values."""
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE_CRASH], capture_output=True, timeout=60, check=True
    )
    err = done.stderr.decode()
    assert "delivery.crashed" in err
    assert "RuntimeError" in err
    assert "TOPSECRET" not in err
    assert "hdr-S3cr3t" not in err


async def test_a_keyed_client_writing_first_stops_a_keyless_daemon(
    redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A Client with a key that creates the first webhook, before any daemon ran, marks the
    deployment encrypted: a daemon started without that key then exits 2 naming it (instead
    of running with webhooks whose jobs it can never sign)."""
    key = os.urandom(32)
    text = base64.b64encode(key).decode()
    async with Client.from_url(redis_url, prefix, encryption_keys=[text]) as client:
        await client.create_webhook("acme", "http://127.0.0.1:9/h", headers={"X": "v"})
    daemon = Daemon(_env(redis_url, prefix), logs_dir / "keyless.log").start()
    assert await asyncio.to_thread(daemon.wait) == 2  # a config error
    [line] = log_events(daemon, "daemon.start_failed")
    assert key_id(key) in line["problem"]


def test_the_cache_of_opened_values_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's cache of opened values stays within its byte bound, however large the
    header values (each PATCH of a webhook with 128 KiB of them makes a new blob)."""
    from dispatcher import crypto  # noqa: PLC0415

    limit = 1_000_000
    monkeypatch.setattr(crypto, "CACHE_BYTES", limit, raising=False)
    ring = Keyring((os.urandom(32),))
    big = os.urandom(64 * 1024)
    for n in range(40):
        plain = big + n.to_bytes(4, "big")
        assert ring.open_cached(ring.seal(plain, b"aad"), b"aad") == plain
    held = ring._cache  # what it holds is the point
    assert sum(len(t) + len(a) + len(v) for (t, a), v in held.items()) <= limit
