"""Secrets encrypted at rest, end to end: real ``dispatcher run`` processes, a real Redis and
real targets. What Redis holds, what a daemon with a wrong or missing key does, key rotation
with ``dispatcher rekey``, and the write-only header values of the answers."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote_plus

import orjson
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from dispatcher import Client, EncryptionKeyMissing, InvalidField, shapes
from dispatcher.config import SecurityConfig
from dispatcher.crypto import Keyring, key_id
from dispatcher.model import MASK, Webhook
from dispatcher.queue.keys import Keys
from tests.helpers import Daemon, daemon_env, eventually, log_events, stop_daemons
from tests.pki import Authority
from tests.target import Reply, Target
from tests.token_server import CLIENT_ID, CLIENT_SECRET, BearerTarget, TokenServer

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

HEADER_VALUE = "Bearer hdr-S3cr3t-value"
FAST = {"delivery_max_attempts": "1", "delivery_timeout_s": "2", "delivery_stall_timeout_s": "3"}


def _key() -> tuple[bytes, str]:
    key = os.urandom(32)
    return key, base64.b64encode(key).decode()


def _env(redis_url: str, prefix: str, *keys: str) -> dict[str, str]:
    env = daemon_env(redis_url, prefix, **FAST)
    if keys:
        env["DISPATCHER_SECURITY_ENCRYPTION_KEYS"] = ",".join(keys)
    return env


async def _started(daemon: Daemon) -> None:
    await eventually(lambda: log_events(daemon, "daemon.started"), timeout_s=20, what="start")


def _needles(secret: str) -> list[bytes]:
    """A secret as text, its key bytes, and the base64 of either."""
    raw = base64.b64decode(secret.removeprefix("whsec_"))
    found = [secret.encode(), raw, base64.b64encode(secret.encode()), base64.b64encode(raw)]
    return [*found, base64.urlsafe_b64encode(raw)]


#: How each type of key is read whole.
READ: dict[bytes, tuple[Any, ...]] = {
    b"string": ("GET",),
    b"hash": ("HGETALL",),
    b"stream": ("XRANGE", "-", "+"),
    b"zset": ("ZRANGE", 0, -1),
    b"list": ("LRANGE", 0, -1),
    b"set": ("SMEMBERS",),
}


def _flat(value: object) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, dict):
        return [b for kv in value.items() for b in _flat(kv)]
    if isinstance(value, list | tuple | set):
        return [b for item in value for b in _flat(item)]
    return [str(value).encode()]


async def _redis_holds(redis: aioredis.Redis, prefix: str, needles: list[bytes]) -> set[bytes]:
    """The needles found in any key of the prefix, read by type and as its DUMP (RDB
    compresses long strings, so DUMP alone would hide a needle)."""
    found: set[bytes] = set()
    async for key in redis.scan_iter(match=f"{prefix}:*", count=500):
        command = READ[cast("bytes", await redis.type(key))]
        value = await redis.execute_command(command[0], key, *command[1:])  # type: ignore[no-untyped-call]
        blob = b"\0".join([key, await redis.dump(key) or b"", *_flat(value)])
        found |= {n for n in needles if n in blob}
    return found


@pytest.mark.parametrize("keyed", [True, False], ids=["with_key", "control_without_key"])
async def test_redis_holds_no_secret_or_header_value_with_a_key(
    redis_url: str, prefix: str, redis: aioredis.Redis, logs_dir: Path, keyed: bool
) -> None:
    """With a key, no key of the prefix holds a signing secret (current or in its grace), a
    header value, a TLS client key (a line of its PEM, its DER), or their base64, while
    deliveries still verify with both secrets and carry the header; without one (the control)
    Redis holds them all. A failing delivery's log lines hold no secret either way."""
    _, key = _key()
    keys = (key,) if keyed else ()
    leaf = Authority.new("client CA").issue("dispatcher-client", server=False)
    daemon = Daemon(_env(redis_url, prefix, *keys), logs_dir / "dump.log").start()
    async with Target() as target, Client.from_url(
        redis_url, prefix, encryption_keys=keys
    ) as client:
        try:
            await _started(daemon)
            target.script("/fail", Reply(500, b"nope"))
            hook = await client.create_webhook(
                "acme", target.url("/ok"), headers={"Authorization": HEADER_VALUE}
            )
            old = hook["secret"]
            rotated = await client.rotate_secret(hook["id"], grace_s=3600)
            failing = await client.create_webhook(
                "acme", target.url("/fail"), headers={"X-Fail": HEADER_VALUE + "-fail"}
            )
            client_tls = {"client_cert_pem": leaf.cert_pem, "client_key_pem": leaf.key_pem}
            await client.create_webhook("acme-mtls", "https://mtls.example/h", tls=client_tls)
            await client.publish("acme", "order.paid", {"n": 1})
            await eventually(lambda: len(target.received) == 2, timeout_s=20, what="deliveries")
            await eventually(lambda: log_events(daemon, "delivery.failed"), what="failure log")
        finally:
            await stop_daemons(daemon)
    ok = next(r for r in target.received if r.path == "/ok")
    assert ok.headers["Authorization"] == HEADER_VALUE
    for secret in (old, rotated["secret"]):
        Verifier(secret).verify(ok.body, dict(ok.headers))
    secrets = [old, rotated["secret"], failing["secret"]]
    values = [HEADER_VALUE.encode(), base64.b64encode(HEADER_VALUE.encode())]
    key_lines = [line.encode() for line in leaf.key_pem.splitlines()[1:-1]]
    key_der = base64.b64decode(b"".join(key_lines))
    key_needles = [*key_lines, b"".join(key_lines), key_der]
    needles = [n for s in secrets for n in _needles(s)] + values + key_needles
    found = await _redis_holds(redis, prefix, needles)
    if keyed:
        assert found == set()
    else:  # the control: the same search finds them in plain text
        assert {old.encode(), rotated["secret"].encode(), HEADER_VALUE.encode()} <= found
        assert set(key_lines) <= found
    log = daemon.log.encode()
    assert [n for n in needles if n in log] == []


async def test_a_wrong_or_missing_key_stops_the_start(
    redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """A daemon on a deployment encrypted with key A exits 2, with one line naming A,
    when it has no key or only another key; with A it starts."""
    key_a, a = _key()
    _, b = _key()
    first = Daemon(_env(redis_url, prefix, a), logs_dir / "first.log").start()
    try:
        await _started(first)  # marks the canary with A
    finally:
        await stop_daemons(first)
    for name, keys in (("none", ()), ("wrong", (b,))):
        daemon = Daemon(_env(redis_url, prefix, *keys), logs_dir / f"{name}.log").start()
        assert await asyncio.to_thread(daemon.wait) == 2
        [line] = log_events(daemon, "daemon.start_failed")
        assert key_id(key_a) in line["problem"]
        assert line["problem"].startswith("security.encryption_keys: ")
        assert a not in daemon.log


async def test_rotation_old_records_deliver_then_rekey_makes_them_current(
    redis_url: str, prefix: str, redis: aioredis.Redis, logs_dir: Path
) -> None:
    """Keys [new, old] start on records sealed with old and deliver them signed; `dispatcher
    rekey` then seals every record with new (plain-text ones too), reporting counts, and a
    daemon with only the new key starts and delivers."""
    _, old = _key()
    key_new, new = _key()
    async with Target() as target:
        async with Client.from_url(redis_url, prefix) as client:  # before any canary: plain
            plain = await client.create_webhook("acme", target.url("/b"))
        async with Client.from_url(redis_url, prefix, encryption_keys=[old]) as client:
            sealed = await client.create_webhook("acme", target.url("/a"), headers={"X": "1"})
        await _publish_through(Daemon(_env(redis_url, prefix, new, old), logs_dir / "both.log"))
        await eventually(lambda: len(target.received) == 2, timeout_s=20)
        for received in target.received:
            secret = sealed["secret"] if received.path == "/a" else plain["secret"]
            Verifier(secret).verify(received.body, dict(received.headers))
        env = _env(redis_url, prefix, new, old)
        report = await _rekey(env, "--dry-run")
        assert report[0] == 0
        assert (report[1]["encrypted_from_plaintext"], report[1]["rekeyed"]) == (1, 1)
        records = await redis.hgetall(Keys(prefix).webhooks)
        assert sum(key_id(key_new).encode() in r for r in records.values()) == 0  # dry run
        code, counts = await _rekey(env)
        assert code == 0
        assert counts == {
            "key_id": key_id(key_new),
            "webhooks": 2,
            "encrypted_from_plaintext": 1,
            "rekeyed": 1,
            "already_current": 0,
            "unreadable": 0,
            "unreadable_ids": [],
            "dry_run": False,
        }
        assert (await _rekey(env))[1]["already_current"] == 2
        ring = Keyring((key_new,))
        for raw in (await redis.hgetall(Keys(prefix).webhooks)).values():
            assert Webhook.decode(cast("bytes", raw), ring).sealed is None
        # the old key is no longer needed
        await _publish_through(Daemon(_env(redis_url, prefix, new), logs_dir / "new.log"))
        await eventually(lambda: len(target.received) == 4, timeout_s=20)
        ok = next(r for r in target.received[2:] if r.path == "/a")
        Verifier(sealed["secret"]).verify(ok.body, dict(ok.headers))
        assert ok.headers["X"] == "1"


async def _publish_through(daemon: Daemon) -> None:
    """Start ``daemon``, publish one event of tenant acme, and stop it once the event's
    deliveries are done (SIGTERM drains them)."""
    env = daemon.env
    daemon.start()
    try:
        await _started(daemon)
        redis_url, prefix = env["DISPATCHER_REDIS_URL"], env["DISPATCHER_REDIS_PREFIX"]
        async with Client.from_url(redis_url, prefix) as client:
            answer = await client.publish("acme", "e", {"n": 1})
            await eventually(lambda: _all_delivered(client, answer), timeout_s=20)
    finally:
        await stop_daemons(daemon)


async def _all_delivered(client: Client, answer: shapes.PublishAnswer) -> bool:
    for job in answer["jobs"]:
        found = await client.get_job(job["id"])
        if found is None or found["state"] != "delivered":
            return False
    return True


async def _rekey(env: dict[str, str], *args: str) -> tuple[int, dict[str, object]]:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "dispatcher", "rekey", *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    return done.returncode, orjson.loads(lines[0])


async def test_a_record_no_key_opens_waits_and_rekey_names_it(
    redis_url: str, prefix: str, redis: aioredis.Redis, logs_dir: Path
) -> None:
    """A webhook sealed with a key the daemon lacks gets nothing sent: its job waits,
    unattempted, with waiting_for "undecryptable" and an error log naming the key; `rekey`
    counts it unreadable, names it and exits 1."""
    _, a = _key()
    key_c, _ = _key()
    async with Target() as target, Client.from_url(
        redis_url, prefix, encryption_keys=[a]
    ) as client:
        good = await client.create_webhook("acme", target.url("/good"))
        lost = await client.create_webhook("acme", target.url("/lost"))
        raw = cast("bytes", await redis.hget(Keys(prefix).webhooks, lost["id"]))
        stored = Webhook.decode(raw, None)
        stored.sealed = None  # as if written by a process with key C
        stored.secret = lost["secret"]
        await redis.hset(Keys(prefix).webhooks, lost["id"], stored.encode(Keyring((key_c,))))
        daemon = Daemon(_env(redis_url, prefix, a), logs_dir / "lost.log").start()
        try:
            await _started(daemon)
            answer = await client.publish("acme", "e", {"n": 1})
            await eventually(lambda: [r.path for r in target.received] == ["/good"])
            job_id = next(j["id"] for j in answer["jobs"] if j["webhook_id"] == lost["id"])
            job = await eventually(
                lambda: _waiting(client, job_id), what="undecryptable wait", timeout_s=20
            )
            assert job["attempt"] == 0
            [logged] = await eventually(lambda: log_events(daemon, "webhook.undecryptable"))
            assert logged["key_id"] == key_id(key_c)
        finally:
            await stop_daemons(daemon)
        assert [r.path for r in target.received] == ["/good"]
        code, report = await _rekey(_env(redis_url, prefix, a))
        assert (code, report["unreadable"], report["unreadable_ids"]) == (1, 1, [lost["id"]])
        assert report["already_current"] == 1
        assert good["id"] != lost["id"]


async def _waiting(client: Client, job_id: str) -> dict[str, object] | None:
    job = await client.get_job(job_id)
    return dict(job) if job is not None and job["waiting_for"] == "undecryptable" else None


async def test_answers_mask_header_values_and_a_patch_round_trip_keeps_them(
    redis_url: str, prefix: str, logs_dir: Path
) -> None:
    """Create, get, list, PATCH and rotate answer header values as "***"; the answer of a
    GET sent back as a PATCH keeps the stored value, which the target still receives."""
    _, key = _key()
    async with Target() as target, Client.from_url(
        redis_url, prefix, encryption_keys=[key]
    ) as client:
        hook = await client.create_webhook(
            "acme", target.url(), headers={"Authorization": HEADER_VALUE}
        )
        answers = [
            hook,
            await client.get_webhook(hook["id"]),
            (await client.list_webhooks("acme"))["items"][0],
            await client.rotate_secret(hook["id"], grace_s=0),
        ]
        assert [a["headers"] for a in answers] == [{"Authorization": MASK}] * 4
        shown = await client.get_webhook(hook["id"])
        patched = await client.update_webhook(
            hook["id"], headers={**shown["headers"], "X-Env": "prod"}, description="edited"
        )
        assert patched["headers"] == {"Authorization": MASK, "X-Env": MASK}
        with pytest.raises(InvalidField, match="'X-Nope' has no stored value to keep"):
            await client.update_webhook(hook["id"], headers={"X-Nope": MASK})
        daemon = Daemon(_env(redis_url, prefix, key), logs_dir / "mask.log").start()
        try:
            await _started(daemon)
            await client.publish("acme", "e", {"n": 1})
            await eventually(lambda: target.received, timeout_s=20)
        finally:
            await stop_daemons(daemon)
    assert target.received[0].headers["Authorization"] == HEADER_VALUE
    assert target.received[0].headers["X-Env"] == "prod"


async def test_redis_holds_no_oauth_client_secret_with_a_key(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> None:
    """With a key, no key of the prefix holds a webhook's OAuth2 client secret (nor its base64,
    nor the Basic credentials made of it) while its client id is there in the clear, and a
    keyed test send still fetches a token with the real secret."""
    _, key = _key()
    async with (
        TokenServer() as tokens,
        BearerTarget(tokens) as target,
        Client.from_url(
            redis_url,
            prefix,
            encryption_keys=[key],
            security=SecurityConfig(allow_private_targets=True),
        ) as client,
    ):
        auth = {
            "type": "oauth2_client_credentials",
            "token_url": tokens.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        hook = await client.create_webhook("acme", target.url(), auth=auth)
        await client.update_webhook(hook["id"], auth={**auth, "client_secret": MASK})
        verdict = await client.test_webhook(hook["id"])
    assert verdict["delivered"] is True
    assert (tokens.requests, tokens.refusals) == (1, [])
    encoded = quote_plus(CLIENT_SECRET, safe="")
    pair = f"{quote_plus(CLIENT_ID, safe='')}:{encoded}".encode()  # RFC 6749 §2.3.1
    secret = CLIENT_SECRET.encode()
    needles = [secret, base64.b64encode(secret), encoded.encode(), base64.b64encode(pair)]
    control = CLIENT_ID.encode()  # kept in the clear: the search does read the auth
    assert await _redis_holds(redis, prefix, [*needles, control]) == {control}


async def test_a_client_without_the_key_cannot_write_secrets(
    redis_url: str, prefix: str, redis: aioredis.Redis
) -> None:
    """On an encrypted deployment a Client without the key reads webhooks (values masked)
    but creating, changing or test-sending one raises EncryptionKeyMissing naming the key."""
    key, text = _key()
    async with Client.from_url(redis_url, prefix, encryption_keys=[text]) as keyed:
        hook = await keyed.create_webhook("acme", "http://127.0.0.1:9/h", headers={"X": "v"})
        await keyed.update_webhook(hook["id"], description="marks nothing yet")
    from dispatcher.queue import encryption  # noqa: PLC0415
    from dispatcher.queue.store import Store  # noqa: PLC0415

    store = Store.open(redis_url, prefix=prefix, keyring=Keyring((key,)))
    try:
        await encryption.mark(store, Keyring((key,)))  # as the daemon does at start
    finally:
        await store.close()
    async with Client.from_url(redis_url, prefix) as keyless:
        assert (await keyless.get_webhook(hook["id"]))["headers"] == {"X": MASK}
        with pytest.raises(EncryptionKeyMissing, match=key_id(key)):
            await keyless.create_webhook("acme", "http://127.0.0.1:9/h")
        with pytest.raises(EncryptionKeyMissing, match=key_id(key)):
            await keyless.update_webhook(hook["id"], description="x")
        with pytest.raises(EncryptionKeyMissing):
            await keyless.test_webhook(hook["id"])


async def test_rekey_never_undoes_a_concurrent_change(redis_url: str, prefix: str) -> None:
    """PATCHes made while `rekey` runs all survive, and every record ends sealed with the
    first key (rekey writes through the webhook compare-and-set)."""
    from dispatcher.queue import rekey, webhooks  # noqa: PLC0415
    from dispatcher.queue.store import Store  # noqa: PLC0415

    key, _ = _key()
    plain = Store.open(redis_url, prefix=prefix)
    keyed = Store.open(redis_url, prefix=prefix, keyring=Keyring((key,)))
    try:
        fields = {"tenant_id": "acme", "url": "http://127.0.0.1:9/h", "headers": {"X": "v"}}
        ids = [(await webhooks.create_webhook(plain, fields)).id for _ in range(40)]
        changes = [
            webhooks.update_webhook(keyed, hook_id, {"description": f"d{n}"})
            for n, hook_id in enumerate(ids)
        ]
        done = await asyncio.gather(rekey.run(keyed), *changes)
        assert cast("rekey.Report", done[0]).unreadable == 0
        for n, hook_id in enumerate(ids):
            raw = cast("bytes", await keyed.redis.hget(keyed.keys.webhooks, hook_id))
            assert Keyring((key,)).is_current(orjson.loads(raw)["sealed"])
            hook = Webhook.decode(raw, keyed.keyring)
            assert (hook.description, hook.headers) == (f"d{n}", {"X": "v"})
    finally:
        await plain.close()
        await keyed.close()
