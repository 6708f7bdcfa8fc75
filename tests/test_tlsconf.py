"""A webhook's ``tls`` settings (dispatcher/tlsconf.py): what ``check`` refuses, with the field
named and the input never quoted, and the context ``context`` builds, tried in memory-only
handshakes (no sockets)."""

from __future__ import annotations

import errno
import shutil
import ssl
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dispatcher import tlsconf
from dispatcher.errors import InvalidField
from tests.pki import Authority, Leaf, server_context
from tests.tls_kit import (
    encrypted,
    expired,
    handshake,
    intermediate,
    key_pem,
    rsa_leaf,
    self_signed,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture(scope="module")
def servers() -> Authority:
    return Authority.new("server CA")


@pytest.fixture(scope="module")
def clients() -> Authority:
    return Authority.new("client CA")


@pytest.fixture(scope="module")
def client(clients: Authority) -> Leaf:
    return clients.issue("dispatcher-client", server=False)


@pytest.fixture(scope="module")
def mtls_server(servers: Authority, clients: Authority) -> ssl.SSLContext:
    """A server context for localhost that demands a certificate of the client CA."""
    return server_context(servers.issue("localhost"), client_ca=clients)


def _body(pem: str) -> str:
    """The base64 line of a PEM block that an error text must never repeat."""
    return pem.splitlines()[1]


def test_accepts_each_valid_combination_as_given(servers: Authority, client: Leaf) -> None:
    """A CA alone, a client identity alone, or both are stored as given; null is the
    default."""
    identity = {"client_cert_pem": client.cert_pem, "client_key_pem": client.key_pem}
    for tls in ({"ca_pem": servers.cert_pem}, identity, {"ca_pem": servers.cert_pem, **identity}):
        assert tlsconf.check(dict(tls)) == tls
    assert tlsconf.check(None) is None


@pytest.fixture(scope="module")
def refusals(
    servers: Authority, clients: Authority, client: Leaf
) -> dict[str, tuple[object, str, str]]:
    """name -> (tls, field named, reason)."""
    other = clients.issue("other", server=False)
    stale = expired(clients)
    web = servers.issue("localhost")  # serverAuth only
    small = rsa_leaf(clients, 1024)
    k1 = key_pem(ec.generate_private_key(ec.SECP256K1()))
    cert, key = client.cert_pem, client.key_pem
    issuing = intermediate(clients)
    chained = issuing.issue("dispatcher-client", server=False)
    return {
        "not an object": ("PEM", "tls", "must be an object"),
        "empty": ({}, "tls", "at least one field"),
        "unknown field": ({"ca": servers.cert_pem}, "tls", "has no field 'ca'"),
        "not a string": ({"ca_pem": 1}, "tls.ca_pem", "must be a non-empty PEM string"),
        "too long": ({"ca_pem": "x" * (64 * 1024 + 1)}, "tls.ca_pem", "at most 64 KiB"),
        "ca not PEM": ({"ca_pem": "certificate"}, "tls.ca_pem", "is not PEM"),
        "ca is a key": ({"ca_pem": key}, "tls.ca_pem", "holds a private key"),
        "cert with its key": (
            {"client_cert_pem": cert + key, "client_key_pem": key},
            "tls.client_cert_pem",
            "holds a private key",
        ),
        "cert not PEM": (
            {
                "client_cert_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "client_key_pem": key,
            },
            "tls.client_cert_pem",
            "is not PEM",
        ),
        "cert without key": ({"client_cert_pem": cert}, "tls.client_key_pem", "is required"),
        "key without cert": ({"client_key_pem": key}, "tls.client_cert_pem", "is required"),
        "key is a cert": (
            {"client_cert_pem": cert, "client_key_pem": cert},
            "tls.client_key_pem",
            "is not PEM",
        ),
        "key encrypted": (
            {"client_cert_pem": cert, "client_key_pem": encrypted(key)},
            "tls.client_key_pem",
            "is encrypted",
        ),
        "key mismatch": (
            {"client_cert_pem": cert, "client_key_pem": other.key_pem},
            "tls.client_key_pem",
            "does not match tls.client_cert_pem",
        ),
        "chain in the wrong order": (
            {
                "client_cert_pem": issuing.cert_pem + chained.cert_pem,
                "client_key_pem": chained.key_pem,
            },
            "tls.client_cert_pem",
            "must begin with the certificate of tls.client_key_pem",
        ),
        "rsa 1024": (
            {"client_cert_pem": small.cert_pem, "client_key_pem": small.key_pem},
            "tls.client_key_pem",
            "RSA key under 2048 bits",
        ),
        "secp256k1": (
            {"client_cert_pem": cert, "client_key_pem": k1},
            "tls.client_key_pem",
            "unsupported key type",
        ),
        "expired": (
            {"client_cert_pem": stale.cert_pem, "client_key_pem": stale.key_pem},
            "tls.client_cert_pem",
            "expired on ",
        ),
        "ca expired": ({"ca_pem": stale.cert_pem}, "tls.ca_pem", "expired on "),
        "server certificate": (
            {"client_cert_pem": web.cert_pem, "client_key_pem": web.key_pem},
            "tls.client_cert_pem",
            "is not for client authentication",
        ),
    }


REFUSALS = [
    "not an object", "empty", "unknown field", "not a string", "too long", "ca not PEM",
    "ca is a key", "cert with its key", "cert not PEM", "cert without key", "key without cert",
    "key is a cert", "key encrypted", "key mismatch", "chain in the wrong order", "rsa 1024",
    "secp256k1", "expired", "ca expired", "server certificate",
]  # fmt: skip


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_name_the_field_and_never_quote_the_input(
    case: str, refusals: dict[str, tuple[object, str, str]]
) -> None:
    """Each bad ``tls`` is a 422 naming its field, whose text repeats no line of a PEM."""
    value, field, reason = refusals[case]
    with pytest.raises(InvalidField) as raised:
        tlsconf.check(value)
    assert raised.value.field == field
    assert reason in raised.value.reason
    pems = value.values() if isinstance(value, dict) else ()
    for pem in pems:
        if isinstance(pem, str) and pem.count("\n") > 1:
            assert _body(pem) not in str(raised.value)
            assert _body(pem)[:16] not in str(raised.value)


def test_openssl_refusals_become_the_fields_422(client: Leaf, clients: Authority) -> None:
    """What OpenSSL itself refuses while building the context is a 422 too, on the field it
    read (here a key that does not match, past the checks)."""
    other = clients.issue("other", server=False)
    with pytest.raises(InvalidField) as raised:
        tlsconf.context({"client_cert_pem": client.cert_pem, "client_key_pem": other.key_pem})
    assert raised.value.field == "tls.client_cert_pem"
    assert "KEY_VALUES_MISMATCH" in raised.value.reason


def test_ca_pem_is_the_only_trust(servers: Authority, clients: Authority) -> None:
    """With ca_pem the context trusts that CA alone (no system roots), verifies, checks host
    names and speaks TLS 1.2 or later; a server of another CA is refused."""
    context = tlsconf.context({"ca_pem": servers.cert_pem})
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "server CA"),),)]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert handshake(context, server_context(servers.issue("localhost"))) is None
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        handshake(context, server_context(clients.issue("localhost")))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(context, server_context(servers.issue("elsewhere", dns=("elsewhere",))))


def test_an_intermediate_ca_alone_is_enough(servers: Authority) -> None:
    """ca_pem may be the CA that issued the endpoint's certificate though another signed it:
    the endpoint is reached without the root (and its sibling CA's endpoints are not)."""
    issuing = intermediate(servers)
    context = tlsconf.context({"ca_pem": issuing.cert_pem})
    assert handshake(context, server_context(issuing.issue("localhost"))) is None
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, server_context(servers.issue("localhost")))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, server_context(intermediate(servers, "sibling").issue("localhost")))


def test_a_self_signed_endpoint_is_trusted_by_its_own_certificate() -> None:
    """ca_pem may be a self-signed endpoint's own certificate: that endpoint is reached, and
    another self-signed one is not."""
    endpoint = self_signed()
    context = tlsconf.context({"ca_pem": endpoint.cert_pem})
    assert handshake(context, server_context(endpoint)) is None
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, server_context(self_signed()))


@pytest.mark.parametrize("way", ["memfd", "temp-file", "memfd-refused"])
def test_the_client_identity_is_presented(
    way: str,
    servers: Authority,
    client: Leaf,
    mtls_server: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client certificate loads through an anonymous memory file, or a private temporary
    file where there is none or the kernel refuses one, and the server sees it."""
    if way != "temp-file" and not tlsconf.MEMFD:
        pytest.skip("no memfd_create here")
    if way == "memfd-refused":  # as under a seccomp filter that denies the call
        monkeypatch.setattr("os.memfd_create", _refused)
    tls = {"ca_pem": servers.cert_pem, "client_cert_pem": client.cert_pem,
           "client_key_pem": client.key_pem}  # fmt: skip
    context = tlsconf.context(tls, memfd=way != "temp-file")
    assert handshake(context, mtls_server) == "dispatcher-client"
    with pytest.raises(ssl.SSLError):
        handshake(tlsconf.context({"ca_pem": servers.cert_pem}), mtls_server)


def _refused(name: str, flags: int = 0) -> int:
    raise OSError(errno.ENOSYS, "Function not implemented")


def test_the_key_never_rests_in_a_readable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file is 0600 in a 0700 directory and gone once loaded; the memory file
    is no file at all."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    seen: list[tuple[int, int]] = []
    with tlsconf._readable(b"secret", memfd=False) as path:
        file = Path(path)
        seen.append((stat.S_IMODE(file.stat().st_mode), stat.S_IMODE(file.parent.stat().st_mode)))
        assert Path(path).read_bytes() == b"secret"
    assert seen == [(0o600, 0o700)]
    assert list(tmp_path.iterdir()) == []
    if tlsconf.MEMFD:
        with tlsconf._readable(b"secret", memfd=True) as path:
            assert path.startswith("/proc/self/fd/")
            assert Path(path).read_bytes() == b"secret"
        assert list(tmp_path.iterdir()) == []


def test_no_password_prompt_for_an_encrypted_key(client: Leaf) -> None:
    """An encrypted key that reaches OpenSSL is refused at once, never prompted for on a
    terminal."""
    tls = {"client_cert_pem": client.cert_pem, "client_key_pem": encrypted(client.key_pem)}
    with pytest.raises(InvalidField) as raised:
        tlsconf.context(tls)
    assert raised.value.field == "tls.client_cert_pem"


def test_webhooks_with_the_same_settings_share_one_context(
    servers: Authority, client: Leaf, clients: Authority
) -> None:
    """The same settings (in any key order) give the same context, so many webhooks that
    present one client certificate hold one copy of it and of the trust store."""
    tls = {"ca_pem": servers.cert_pem, "client_cert_pem": client.cert_pem,
           "client_key_pem": client.key_pem}  # fmt: skip
    first = tlsconf.shared_context(tls)
    assert tlsconf.shared_context(dict(reversed(tls.items()))) is first
    other = clients.issue("another", server=False)
    tls |= {"client_cert_pem": other.cert_pem, "client_key_pem": other.key_pem}
    assert tlsconf.shared_context(tls) is not first


@pytest.fixture
def system_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[list[Authority], list[Authority]], None]]:
    """Points OpenSSL's system trust store at a bundle file (SSL_CERT_FILE) and a hashed
    directory (SSL_CERT_DIR) of the CAs given, as update-ca-certificates lays them out."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command names the hashed files")

    def make(bundle: list[Authority], directory: list[Authority]) -> None:
        folder = tmp_path / "certs"
        folder.mkdir()
        for ca in directory:
            hashed = subprocess.run(
                ["openssl", "x509", "-noout", "-subject_hash"],
                input=ca.cert_pem, capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            (folder / f"{hashed}.0").write_text(ca.cert_pem)
        (tmp_path / "bundle.pem").write_text("".join(ca.cert_pem for ca in bundle))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "bundle.pem"))
        monkeypatch.setenv("SSL_CERT_DIR", str(folder))
        tlsconf._system_directory.cache_clear()

    yield make
    tlsconf._system_directory.cache_clear()


def test_a_client_identity_reads_the_system_trust_store_from_its_directory(
    system_store: Callable[[list[Authority], list[Authority]], None],
    servers: Authority,
    clients: Authority,
    client: Leaf,
    mtls_server: ssl.SSLContext,
) -> None:
    """Without ca_pem, a context verifies the target through the system's hashed directory
    instead of holding its own copy of the whole bundle (0.8 MB and 40 ms of loop each, for
    every webhook with a client certificate); when the directory lacks a certificate of the
    bundle, the bundle is loaded as before."""
    identity = {"client_cert_pem": client.cert_pem, "client_key_pem": client.key_pem}
    system_store([servers], [servers])
    context = tlsconf.context(identity)
    assert context.cert_store_stats()["x509_ca"] == 0  # nothing loaded before a handshake
    assert handshake(context, mtls_server) == "dispatcher-client"
    tlsconf._system_directory.cache_clear()
    Path(str(ssl.get_default_verify_paths().cafile)).write_text(servers.cert_pem + clients.cert_pem)
    context = tlsconf.context(identity)
    assert context.cert_store_stats()["x509_ca"] == 2  # the bundle's two
    assert handshake(context, mtls_server) == "dispatcher-client"
