"""Test helpers for per-webhook TLS: odd certificates and keys tests/pki.py does not make, an
in-memory handshake, and a Target that records which client certificate each request came with.

    target = PeerTarget(ssl_context=server_context(leaf, client_ca=clients))
    ...
    assert target.peers == ["dispatcher-client"]   # one per request, None: no certificate
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.pki import Authority, Leaf
from tests.target import Received, Target

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterator

    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

__all__ = [
    "PeerTarget",
    "encrypted",
    "expired",
    "handshake",
    "intermediate",
    "key_pem",
    "refusing_server",
    "rsa_leaf",
    "self_signed",
]

_PEER: contextvars.ContextVar[str | None] = contextvars.ContextVar("peer", default=None)


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> str:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def encrypted(pem: str, password: bytes = b"hunter2") -> str:
    """The private key ``pem`` encrypted with ``password``."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    ).decode()


def _leaf(
    issuer: x509.Name,
    signer: CertificateIssuerPrivateKeyTypes,
    subject: str,
    key: CertificateIssuerPrivateKeyTypes,
    *,
    not_after: dt.datetime,
    server: bool,
) -> Leaf:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - dt.timedelta(days=2))
        .not_valid_after(not_after)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    return Leaf(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key))


def expired(ca: Authority, common_name: str = "dispatcher-client") -> Leaf:
    """A client certificate of ``ca`` that expired yesterday."""
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    key = ec.generate_private_key(ec.SECP256R1())
    return _leaf(ca.name, ca.key, common_name, key, not_after=yesterday, server=False)


def self_signed(common_name: str = "localhost") -> Leaf:
    """A self-signed server certificate for localhost and 127.0.0.1 (no CA behind it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return _leaf(name, key, common_name, key, not_after=tomorrow, server=True)


def rsa_leaf(ca: Authority, bits: int) -> Leaf:
    """A client certificate of ``ca`` for an RSA key of ``bits`` (slow above 2048)."""
    key = rsa.generate_private_key(65537, bits)
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return _leaf(ca.name, ca.key, "rsa-client", key, not_after=tomorrow, server=False)


def intermediate(root: Authority, common_name: str = "issuing CA") -> Authority:
    """A CA that ``root`` signed, issuing leaves of its own."""
    return Authority.new(common_name, issuer=root)


def handshake(
    client: ssl.SSLContext, server: ssl.SSLContext, host: str = "localhost"
) -> str | None:
    """Run a TLS handshake between two contexts in memory; the client certificate's common
    name the server saw (None: none was sent). ssl.SSLError when either side refuses."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, side in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return _common_name(s.getpeercert())
    msg = "the handshake did not finish"
    raise AssertionError(msg)


def _common_name(peercert: object) -> str | None:
    """The subject CN of ``SSLSocket.getpeercert()``'s answer, None without a certificate."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class _Peers(list[Received]):
    """The target's ``received`` list, noting each request's client certificate in order."""

    def __init__(self, peers: list[str | None]) -> None:
        super().__init__()
        self._peers = peers

    def append(self, request: Received) -> None:
        self._peers.append(_PEER.get())
        super().append(request)


class PeerTarget(Target):
    """A Target that also records, in ``peers``, the client certificate's common name each
    request came with (None: none), in the order of ``received``."""

    def __init__(self, host: str = "127.0.0.1", *, ssl_context: ssl.SSLContext) -> None:
        super().__init__(host, ssl_context=ssl_context)
        self.peers: list[str | None] = []
        self.received = _Peers(self.peers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Each connection's handler is its own task, so the variable is this connection's.
        _PEER.set(_common_name(writer.get_extra_info("peercert")))
        await super()._serve(reader, writer)


@contextlib.contextmanager
def refusing_server(context: ssl.SSLContext) -> Iterator[int]:
    """A blocking TLS server on 127.0.0.1 that runs each connection's handshake and closes
    it, so the alert of a refused handshake reaches the client (asyncio's server drops it),
    as from a real endpoint; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            with (
                raw,
                context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False) as tls,
            ):
                with contextlib.suppress(ssl.SSLError):  # the refusal, its alert sent
                    tls.do_handshake()
                    tls.recv(1)
                # the client's request read and dropped, not reset, so the alert reaches it
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(tls, socket.SHUT_WR)
                    while socket.socket.recv(tls, 65536):
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()
