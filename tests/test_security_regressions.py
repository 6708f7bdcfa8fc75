"""Issue 20's secrets-at-rest, write-only values and v1a parts, their review's regressions: a
v1a public key answered by processes without the encryption key, and custom header values an
HTTP header cannot carry."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import TYPE_CHECKING, cast

import orjson
import pytest

from dispatcher import Client, InvalidField
from dispatcher.crypto import Keyring, key_id
from dispatcher.model import Webhook
from dispatcher.queue import encryption, rekey
from dispatcher.queue.keys import Keys
from dispatcher.queue.store import Store
from dispatcher.signing import generate_key, public_key_of
from tests.helpers import eventually

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from tests.conftest import WorkerHarness
    from tests.helpers import MakeSender
    from tests.target import Target


async def test_a_v1a_public_key_is_answered_without_the_encryption_key(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> None:
    """A v1a webhook's public_key (not secret: receivers need it) is answered by a process
    that cannot open its sealed signing key, also after such a process wrote the webhook back
    and after `rekey` sealed it under a new key."""
    sealing, other, new = (os.urandom(32) for _ in range(3))
    with_sealing = [base64.b64encode(sealing).decode()]
    async with Client.from_url(redis_url, prefix, encryption_keys=with_sealing) as keyed:
        hook = await keyed.create_webhook("acme", "http://127.0.0.1:9/h", signature_scheme="v1a")
    public = hook["public_key"]
    assert public == public_key_of(hook["secret"])
    async with Client.from_url(redis_url, prefix) as keyless:
        assert (await keyless.get_webhook(hook["id"]))["public_key"] == public
        assert [h["public_key"] for h in (await keyless.list_webhooks("acme"))["items"]] == [
            public
        ]
    await redis.delete(Keys(prefix).encryption)  # so a process with another key may write
    other_keys = [base64.b64encode(other).decode()]
    async with Client.from_url(redis_url, prefix, encryption_keys=other_keys) as wrong:
        written = await wrong.update_webhook(hook["id"], description="its key stays sealed")
        assert written["public_key"] == public
    await redis.delete(Keys(prefix).encryption)  # that process marked its key
    store = Store.open(redis_url, prefix=prefix, keyring=Keyring((new, sealing)))
    try:
        assert (await rekey.run(store)).rekeyed == 1
    finally:
        await store.close()
    async with Client.from_url(redis_url, prefix) as keyless:
        assert (await keyless.get_webhook(hook["id"]))["public_key"] == public
    raw = cast("bytes", await redis.hget(Keys(prefix).webhooks, hook["id"]))
    assert Webhook.decode(raw, Keyring((new,))).secret == hook["secret"]


def test_a_record_stored_without_its_public_key_still_reads() -> None:
    """A v1a record written before the public key was stored beside it (a rolling upgrade)
    reads: with the key its public key is derived (and stored at its next write), without
    the key it is null as before; a v1 record stores none."""
    ring = Keyring((os.urandom(32),))
    hook = Webhook.create(
        {"tenant_id": "acme", "url": "https://example.com/h", "signature_scheme": "v1a"},
        now_ms=0,
    )
    record = orjson.loads(hook.encode(ring))
    assert record["public_key"] == public_key_of(hook.secret)
    del record["public_key"]
    old = orjson.dumps(record)
    opened = Webhook.decode(old, ring)
    assert opened.to_wire()["public_key"] == public_key_of(hook.secret)
    assert orjson.loads(opened.encode(ring))["public_key"] == public_key_of(hook.secret)
    assert Webhook.decode(old).to_wire()["public_key"] is None
    plain = Webhook.create({"tenant_id": "acme", "url": "https://example.com/h"}, now_ms=0)
    assert "public_key" not in orjson.loads(plain.encode(ring))
    plain.apply({"secret": generate_key("v1a")})
    assert orjson.loads(plain.encode(ring))["public_key"] == public_key_of(plain.secret)


# --- header values an HTTP header cannot carry ---------------------------------------------

NOT_LATIN1 = "\N{EURO SIGN}"  # "é" is latin-1 (sent as one byte); the euro sign is not
LATIN1_ERROR = (
    "invalid request: header X-Price has a character outside latin-1 in its value: an HTTP "
    "header cannot carry it"
)


async def test_a_header_value_outside_latin1_is_refused_naming_the_header(client: Client) -> None:
    """Create and PATCH refuse a custom header value an HTTP header cannot carry (every
    attempt would fail) with a 422 naming the header, never quoting its value; latin-1 text
    such as "é" is accepted."""
    for bad in (f"5 {NOT_LATIN1}", "\N{GRINNING FACE}", "a\0b"):
        with pytest.raises(InvalidField, match="'X-Price'") as refused:
            await client.create_webhook("acme", "https://example.com/h", headers={"X-Price": bad})
        assert refused.value.field == "headers"
        assert bad not in str(refused.value)
    hook = await client.create_webhook("acme", "https://example.com/h", headers={"X-Name": "é"})
    with pytest.raises(InvalidField, match="'X-Price' has a character outside ISO-8859-1"):
        await client.update_webhook(hook["id"], headers={"X-Price": f"5 {NOT_LATIN1}"})


async def test_a_stored_header_outside_latin1_fails_its_attempts_clearly(
    client: Client,
    workers: WorkerHarness,
    make_sender: MakeSender,
    target: Target,
    redis: aioredis.Redis,
    prefix: str,
) -> None:
    """A webhook stored before the check with such a header value fails each attempt with an
    error naming the header (not its value), with either HTTP client; nothing is sent and the
    worker goes on delivering."""
    hook = await client.create_webhook("acme", target.url("/h"), headers={"X-Price": "5 EUR"})
    await workers.start(max_attempts=1, sender_class=make_sender)
    await client.publish("acme", "order.created", {})
    await target.wait_for(1)  # the sender now knows the header's name
    keys = Keys(prefix)
    raw = cast("bytes", await redis.hget(keys.webhooks, hook["id"]))
    await redis.hset(keys.webhooks, hook["id"], raw.replace(b"EUR", NOT_LATIN1.encode()))
    job_id = (await client.publish("acme", "order.created", {}))["jobs"][0]["id"]

    async def dead() -> dict[str, object] | None:
        job = await client.get_job(job_id)
        return dict(job) if job is not None and job["state"] == "dead" else None

    assert (await eventually(dead, what="the job dead"))["last_error"] == LATIN1_ERROR
    assert target.count() == 1
    await client.update_webhook(hook["id"], headers={"X-Price": "5 EUR"})
    await client.publish("acme", "order.created", {})
    await target.wait_for(2)


# --- dispatcher rekey under a hostile operator -----------------------------------------------


async def test_two_rekeys_with_different_keys_leave_no_canary_over_mixed_records(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> None:
    """Two `rekey` runs at once with different first keys (an operator's slip) each seal some
    records: a run that reports nothing unreadable and re-marks the canary with its key has
    every record sealed with that key (else daemons given only that key would start and find
    records they cannot open); the other names the records it cannot open."""
    old, first, second = (os.urandom(32) for _ in range(3))
    sealing = Store.open(redis_url, prefix=prefix, keyring=Keyring((old,)))
    runs = [
        Store.open(redis_url, prefix=prefix, keyring=Keyring((key, old)))
        for key in (first, second)
    ]
    try:
        await encryption.mark(sealing, Keyring((old,)))
        fields = {"tenant_id": "acme", "url": "http://127.0.0.1:9/h", "headers": {"X": "v"}}
        pipe = redis.pipeline(transaction=False)
        for _ in range(400):
            hook = Webhook.create(fields, now_ms=0)
            pipe.hset(Keys(prefix).webhooks, hook.id, hook.encode(sealing.keyring))
        await pipe.execute()
        reports = await asyncio.gather(*(rekey.run(store) for store in runs))
        canary = await encryption.read_kid(sealing)
    finally:
        for store in (sealing, *runs):
            await store.close()
    assert canary is not None
    records = (await redis.hgetall(Keys(prefix).webhooks)).values()
    kids = {orjson.loads(raw)["sealed"].split(".")[1] for raw in records}
    for report in reports:
        if report.unreadable == 0:
            assert canary[0] == report.key_id
            assert kids == {report.key_id}
        else:
            assert report.unreadable_ids
    assert canary[0] == key_id(old) or kids == {canary[0]}
