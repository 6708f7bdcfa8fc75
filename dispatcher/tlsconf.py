"""A webhook's own TLS settings: check the ``tls`` object at create/update, build its context.

``tls`` is ``{"ca_pem", "client_cert_pem", "client_key_pem"}`` (any of them; the client
certificate and its key together). With ``ca_pem`` the webhook trusts ONLY those certificates
(a private CA, or a self-signed endpoint's own certificate), not the system's trust store; the
client certificate and key are presented to targets that ask for one (mTLS).

``check`` refuses, with a 422 naming the field, whatever would make every delivery fail: a
value that is not PEM, a certificate without its key, an encrypted or unsupported key, a key
that does not match its certificate, an expired certificate, a client certificate not meant
for clients. Its reasons never quote the input
(a key pasted into the wrong field must not come back in an error or a log). It ends by building
the context once, so what OpenSSL would refuse later is refused now.

``context`` builds the ``ssl.SSLContext``; callers cache it per webhook (channel.py), never per
attempt. ``load_cert_chain`` reads paths only, so the certificate and key go through an
anonymous memory file (``memfd_create``, read back as /proc/self/fd/N): the private key never
touches a disk. Where that is missing, a 0600 file in a fresh 0700 directory, removed at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
import re
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from dispatcher.errors import InvalidField

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = ["FIELDS", "MAX_PEM_BYTES", "MEMFD", "SHARED_KEPT", "check", "context", "shared_context"]

FIELDS: Final = ("ca_pem", "client_cert_pem", "client_key_pem")
MAX_PEM_BYTES: Final = 64 * 1024
MIN_RSA_BITS: Final = 2048
#: Distinct settings whose context is kept for sharing; past it the oldest is dropped.
SHARED_KEPT: Final = 1_000
# Curves OpenSSL signs TLS handshakes with (secp256k1 loads, but no server would accept it).
_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})
# memfd_create and /proc/self/fd (Linux): the key stays in memory on its way to OpenSSL.
MEMFD: Final = hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir()
# A file OpenSSL looks an issuer up by in a certificate directory: its subject's hash, a suffix.
_HASHED: Final = re.compile(r"[0-9a-f]{8}\.[0-9]+")
_PEM_CERTIFICATE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL
)
_NOT_PEM: Final = "is not PEM: expected -----BEGIN CERTIFICATE----- blocks"
_PUBLIC: Final = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_FIELDS_ARE: Final = "its fields are ca_pem, client_cert_pem and client_key_pem"
_UNSUPPORTED: Final = (
    "has an unsupported key type (use RSA of 2048 bits or more, EC P-256/384/521 or Ed25519)"
)


def check(value: Any) -> dict[str, str] | None:
    """The ``tls`` value to store (None: the defaults), or InvalidField naming the field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidField("tls", "must be an object {ca_pem, client_cert_pem, client_key_pem}")
    for name in value:
        if name not in FIELDS:
            raise InvalidField("tls", f"has no field {str(name)[:40]!r}; " + _FIELDS_ARE)
    if not value:
        raise InvalidField("tls", "must hold at least one field (null removes it); " + _FIELDS_ARE)
    tls = {name: _pem_text(name, value[name]) for name in FIELDS if name in value}
    if "ca_pem" in tls:
        _check_authorities(tls["ca_pem"])
    if ("client_cert_pem" in tls) != ("client_key_pem" in tls):
        given, missing = (
            ("client_cert_pem", "client_key_pem")
            if "client_cert_pem" in tls
            else ("client_key_pem", "client_cert_pem")
        )
        raise InvalidField(f"tls.{missing}", f"is required with tls.{given}")
    if "client_cert_pem" in tls:
        _check_identity(tls["client_cert_pem"], tls["client_key_pem"])
    context(tls, system_roots=False)  # OpenSSL's own verdict, mapped to the field it read
    return tls


def context(
    tls: Mapping[str, str], *, memfd: bool = MEMFD, system_roots: bool = True
) -> ssl.SSLContext:
    """A client context for a webhook's ``tls``: its CA alone (else the system's trust
    store; ``system_roots=False``: none, for a check that need not pay to load it), its
    client certificate, TLS 1.2 or later, host names checked. InvalidField when OpenSSL
    refuses a value (``check`` runs this once, so stored settings always build)."""
    ca_pem = tls.get("ca_pem")
    try:
        if ca_pem:
            tls_context = ssl.create_default_context(cadata=ca_pem)
        else:
            tls_context = _default() if system_roots else _untrusting()
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidField("tls.ca_pem", f"was refused by OpenSSL ({_reason(exc)})") from None
    if ca_pem:  # each certificate given is an anchor, an intermediate CA too (as in 3.13)
        tls_context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    tls_context.minimum_version = ssl.TLSVersion.TLSv1_2
    tls_context.check_hostname = True  # the default's already; said here because it matters
    cert_pem, key_pem = tls.get("client_cert_pem"), tls.get("client_key_pem")
    if cert_pem and key_pem:
        chain = (cert_pem.rstrip("\n") + "\n" + key_pem.rstrip("\n") + "\n").encode()
        try:
            with _readable(chain, memfd=memfd) as path:
                tls_context.load_cert_chain(path, password=_no_password)
        except (ssl.SSLError, ValueError) as exc:
            reason = f"was refused by OpenSSL ({_reason(exc)})"
            raise InvalidField("tls.client_cert_pem", reason) from None
    return tls_context


_shared: dict[bytes, ssl.SSLContext] = {}


def shared_context(tls: Mapping[str, str]) -> ssl.SSLContext:
    """``context(tls)``, built once per distinct settings in this process: webhooks that
    present the same client certificate share one (without ``ca_pem``, see ``_default``)."""
    key = hashlib.sha256(orjson.dumps(tls, option=orjson.OPT_SORT_KEYS)).digest()
    found = _shared.get(key)
    if found is None:
        found = context(tls)
        if len(_shared) >= SHARED_KEPT:
            del _shared[next(iter(_shared))]
        _shared[key] = found
    return found


def _default() -> ssl.SSLContext:
    """The system's trust store. Loaded whole, it costs each context about 0.8 MB and 40 ms
    of CPU that holds the GIL (a thread would stall the loop as much), so a webhook with a
    client certificate and no ``ca_pem`` would cost that each; from the hashed directory
    that holds the same certificates (``_system_directory``), OpenSSL reads an issuer's file
    only when a handshake needs it: about 0.2 ms and a few KiB."""
    directory = _system_directory()
    if directory is None:
        return ssl.create_default_context()
    return ssl.create_default_context(capath=directory)


@functools.cache
def _system_directory() -> str | None:
    """OpenSSL's certificate directory (``SSL_CERT_DIR``) when its hashed files hold every
    certificate of the bundle ``ssl.create_default_context`` loads (``SSL_CERT_FILE``), so
    that trusting the directory alone trusts the same (Debian's and Alpine's layout);
    None otherwise (the bundle is then loaded whole). Looked at once per process."""
    paths = ssl.get_default_verify_paths()
    if not paths.capath or not os.path.isdir(paths.capath):  # noqa: PTH112 - a str path
        return None
    try:
        bundle = _pem_bodies(Path(paths.cafile).read_bytes()) if paths.cafile else set()
        found: set[bytes] = set()
        for entry in os.scandir(paths.capath):
            if _HASHED.fullmatch(entry.name):
                found |= _pem_bodies(Path(entry.path).read_bytes())
    except (OSError, ValueError):
        return None
    return paths.capath if bundle <= found else None


def _pem_bodies(pem: bytes) -> set[bytes]:
    """The certificates of a PEM file, each as its block's base64 text without line breaks
    (compared, not parsed: a system root cryptography frowns on is still the same root)."""
    return {b"".join(body.split()) for body in _PEM_CERTIFICATE.findall(pem)}


def _untrusting() -> ssl.SSLContext:
    """The default context's settings without its trust store (tens of ms to load)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _no_password() -> bytes:
    """Never prompt on a terminal for a key's password (check refuses encrypted keys)."""
    raise ValueError("the key is encrypted")


def _reason(exc: BaseException) -> str:
    """OpenSSL's reason code (e.g. ``KEY_VALUES_MISMATCH``): it names the problem, not the
    input."""
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else type(exc).__name__


@contextlib.contextmanager
def _readable(data: bytes, *, memfd: bool) -> Iterator[str]:
    """A path that reads ``data`` while the block runs: an anonymous memory file, else a
    0600 file in a 0700 directory, removed on exit."""
    fd = _memory_file() if memfd else None
    if fd is not None:
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    directory = tempfile.mkdtemp(prefix="dispatcher-tls-")  # mode 0700
    path = os.path.join(directory, "chain.pem")  # noqa: PTH118 - os.open wants a str path
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _memory_file() -> int | None:
    """An anonymous memory file's descriptor, or None where the kernel refuses one."""
    try:
        return os.memfd_create("dispatcher-tls", os.MFD_CLOEXEC)
    except OSError:  # ENOSYS under some seccomp filters: fall back to a private file
        return None


def _pem_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(f"tls.{name}", "must be a non-empty PEM string")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PEM_BYTES:
        raise InvalidField(f"tls.{name}", f"must be at most {MAX_PEM_BYTES // 1024} KiB")
    if not value.isascii():
        raise InvalidField(f"tls.{name}", _NOT_PEM)
    return value


def _certificates(name: str, pem: str) -> list[x509.Certificate]:
    """Every certificate in ``pem``; InvalidField when there is none, or a private key is
    among them (it would be stored and answered in the clear)."""
    if "PRIVATE KEY-----" in pem:
        raise InvalidField(f"tls.{name}", "holds a private key: it belongs in tls.client_key_pem")
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise InvalidField(f"tls.{name}", _NOT_PEM) from None
    if not certificates:  # pragma: no cover - cryptography raises on an empty list
        raise InvalidField(f"tls.{name}", _NOT_PEM)
    return certificates


def _check_authorities(pem: str) -> None:
    """The CA certificates: at least one still valid (an expired one verifies nothing)."""
    expires = max(c.not_valid_after_utc for c in _certificates("ca_pem", pem))
    if expires <= dt.datetime.now(dt.UTC):
        raise InvalidField("tls.ca_pem", f"expired on {expires:%Y-%m-%d %H:%M} UTC")


def _check_identity(cert_pem: str, key_pem: str) -> None:
    """The client certificate (leaf first, then its intermediates) and its key."""
    field = "tls.client_cert_pem"
    leaf, *chain = _certificates("client_cert_pem", cert_pem)
    public = _private_key(key_pem).public_key().public_bytes(*_PUBLIC)
    if leaf.public_key().public_bytes(*_PUBLIC) != public:
        if any(c.public_key().public_bytes(*_PUBLIC) == public for c in chain):
            why = "must begin with the certificate of tls.client_key_pem, then its intermediates"
            raise InvalidField(field, why)  # a chain pasted root or intermediate first
        raise InvalidField("tls.client_key_pem", "does not match tls.client_cert_pem")
    expires = leaf.not_valid_after_utc
    if expires <= dt.datetime.now(dt.UTC):
        raise InvalidField(field, f"expired on {expires:%Y-%m-%d %H:%M} UTC")
    if not _for_clients(leaf):  # servers check this purpose and refuse the handshake
        raise InvalidField(field, "is not for client authentication (no clientAuth usage)")


_ClientKey: TypeAlias = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


def _for_clients(leaf: x509.Certificate) -> bool:
    """Whether ``leaf`` may authenticate a TLS client: no extended key usage, or one that
    lists clientAuth (or any usage)."""
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(
        {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(usage)
    )


def _private_key(pem: str) -> _ClientKey:
    field = "tls.client_key_pem"
    if "-----BEGIN" not in pem or "PRIVATE KEY-----" not in pem:
        raise InvalidField(field, "is not PEM: expected a -----BEGIN PRIVATE KEY----- block")
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:  # cryptography: a password is needed
        raise InvalidField(
            field,
            "is encrypted: give it unencrypted (security.encryption_keys encrypts it at rest)",
        ) from None
    except UnsupportedAlgorithm:
        raise InvalidField(field, _UNSUPPORTED) from None
    except ValueError:
        raise InvalidField(field, "is not a readable PEM private key") from None
    match key:
        case rsa.RSAPrivateKey() if key.key_size < MIN_RSA_BITS:
            raise InvalidField(field, f"is an RSA key under {MIN_RSA_BITS} bits")
        case ec.EllipticCurvePrivateKey() if key.curve.name not in _CURVES:
            raise InvalidField(field, _UNSUPPORTED)
        case (
            rsa.RSAPrivateKey()
            | ec.EllipticCurvePrivateKey()
            | ed25519.Ed25519PrivateKey()
            | ed448.Ed448PrivateKey()
        ):
            return key
    raise InvalidField(field, _UNSUPPORTED)
