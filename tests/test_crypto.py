"""Secrets at rest without Redis: the keyring's seal and open, the keys' configuration, and
the webhook record's sealed and masked forms."""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

import orjson
import pytest

from dispatcher.config import load, redacted
from dispatcher.crypto import Keyring, Undecryptable, key_id
from dispatcher.errors import ConfigError, EncryptionKeyMissing, InvalidField
from dispatcher.model import MASK, Webhook

if TYPE_CHECKING:
    from pathlib import Path

KEY_A, KEY_B = os.urandom(32), os.urandom(32)
HEADER_VALUE = "Bearer hdr-S3cr3t"


def _hook() -> Webhook:
    return Webhook.create(
        {"tenant_id": "acme", "url": "https://example.com/h", "headers": {"X-Key": HEADER_VALUE}},
        now_ms=1,
    )


def test_a_sealed_value_opens_only_with_its_key_and_record() -> None:
    """A value opens under its own associated data with the key it names; a flipped byte,
    another record's data or an unconfigured key is Undecryptable, naming the key id."""
    ring = Keyring((KEY_A,))
    token = ring.seal(b"whsec_x", b"dispatcher.webhook.wh_1")
    assert ring.open(token, b"dispatcher.webhook.wh_1") == b"whsec_x"
    assert token != ring.seal(b"whsec_x", b"dispatcher.webhook.wh_1")  # a nonce per seal
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad, aad in ((flipped, b"dispatcher.webhook.wh_1"), (token, b"dispatcher.webhook.wh_2")):
        with pytest.raises(Undecryptable):
            ring.open(bad, aad)
    with pytest.raises(Undecryptable) as caught:
        Keyring((KEY_B,)).open(token, b"dispatcher.webhook.wh_1")
    assert caught.value.kid == key_id(KEY_A)
    assert key_id(KEY_A) in str(caught.value)


def test_the_first_key_seals_and_every_key_opens() -> None:
    """With keys [B, A] a value sealed under A opens and is not current; new seals use B."""
    old = Keyring((KEY_A,)).seal(b"s", b"x")
    both = Keyring((KEY_B, KEY_A))
    assert both.open(old, b"x") == b"s"
    assert not both.is_current(old)
    assert both.is_current(both.seal(b"s", b"x"))


def test_a_webhook_record_holds_no_secret_and_opens_with_its_key() -> None:
    """The stored record holds neither the secret nor a header value; the keyring opens them
    back; a process without the key reads the webhook but cannot sign nor change secrets."""
    hook = _hook()
    hook.old_secrets = [["whsec_" + base64.b64encode(b"o" * 24).decode(), 10**13]]
    ring = Keyring((KEY_A,))
    raw = hook.encode(ring)
    for needle in (hook.secret, hook.old_secrets[0][0], HEADER_VALUE):
        assert needle.encode() not in raw
    opened = Webhook.decode(raw, ring)
    assert (opened.secret, opened.old_secrets, opened.headers) == (
        hook.secret,
        hook.old_secrets,
        hook.headers,
    )
    keyless = Webhook.decode(raw)
    assert keyless.headers == {"X-Key": MASK}
    with pytest.raises(EncryptionKeyMissing):
        keyless.secrets(0)
    assert keyless.encode() == raw  # written back unchanged (a description PATCH, say)
    keyless.apply({"headers": {"X-Key": "new"}})
    with pytest.raises(EncryptionKeyMissing):
        keyless.encode()


def test_answers_mask_header_values_and_a_mask_sent_back_keeps_them() -> None:
    """Answers show header names with "***"; a PATCH sending "***" keeps the stored value, a
    new value replaces it, and "***" for a header never stored is a 422 naming it."""
    hook = _hook()
    assert hook.to_wire()["headers"] == {"X-Key": MASK}
    hook.apply({"headers": {"X-Key": MASK, "X-Other": "v"}})
    assert hook.headers == {"X-Key": HEADER_VALUE, "X-Other": "v"}
    with pytest.raises(InvalidField) as caught:
        hook.apply({"headers": {"X-New": MASK}})
    assert caught.value.field == "headers"
    assert "'X-New' has no stored value to keep" in caught.value.message


def test_repr_shows_no_secret() -> None:
    """A webhook in a traceback or a log line shows neither its secrets nor header values."""
    hook = _hook()
    hook.old_secrets = [["whsec_old", 1]]
    text = repr(hook)
    assert hook.secret not in text
    assert HEADER_VALUE not in text
    assert "whsec_old" not in text


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_keys_from_env_toml_and_file(tmp_path: Path) -> None:
    """The keys come from a comma-separated env value, a TOML list or a key file (comments
    allowed), in order; check-config shows each as "***"."""
    env = {"DISPATCHER_SECURITY_ENCRYPTION_KEYS": f"{_b64(KEY_B)}, {_b64(KEY_A)}"}
    assert load(None, env).security.encryption_keys == (KEY_B, KEY_A)
    toml = tmp_path / "d.toml"
    toml.write_text(f'[security]\nencryption_keys = ["{_b64(KEY_A)}"]\n')
    assert load(toml, {}).security.encryption_keys == (KEY_A,)
    keys = tmp_path / "keys"
    keys.write_text(f"# the new key first\n{_b64(KEY_B)}\n\n{_b64(KEY_A)}\n")
    cfg = load(None, {"DISPATCHER_SECURITY_ENCRYPTION_KEYS_FILE": str(keys)})
    assert cfg.security.encryption_keys == (KEY_B, KEY_A)
    shown = orjson.dumps(redacted(cfg))
    assert shown.count(b'"***"') == 2
    assert _b64(KEY_A).encode() not in shown


def test_a_bad_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """A key that is not base64 of 32 bytes is named by position and never shown; keys
    given both inline and in a file are refused."""
    short = _b64(os.urandom(16))
    with pytest.raises(ConfigError) as caught:
        load(None, {"DISPATCHER_SECURITY_ENCRYPTION_KEYS": f"{_b64(KEY_A)},{short}"})
    text = str(caught.value)
    assert "key 2 of 2 is not base64 of 32 bytes" in text
    assert short not in text
    keys = tmp_path / "keys"
    keys.write_text(_b64(KEY_A))
    both = {
        "DISPATCHER_SECURITY_ENCRYPTION_KEYS": _b64(KEY_A),
        "DISPATCHER_SECURITY_ENCRYPTION_KEYS_FILE": str(keys),
    }
    with pytest.raises(ConfigError, match="are both set"):
        load(None, both)
