"""The address policy for webhook targets (RELIABILITY R15).

The decision is made on the address actually dialled, at every attempt:

- host names go through :class:`GuardedResolver`, the sender's only resolver, so only
  addresses the policy allows are ever connected to (the sender caches an answer for a few
  seconds, and a DNS answer that changes is checked again whenever it is resolved again);
- IP literals are dialled without a lookup, so the sender checks them with
  :meth:`AddressPolicy.literal_refusal` before anything is sent.

With an egress proxy (``delivery.proxy_url``, :mod:`dispatcher.proxy`) the proxy resolves and
dials target names, so only IP-literal targets are checked here (still before anything is
sent); the addresses behind names are the proxy's to police. The proxy's own address is the
operator's choice and is not checked (``GuardedResolver``'s ``trusted_hosts``).

Python 3.11's ``ipaddress`` misjudges wrapped forms (``::127.0.0.1`` and ``192.0.0.8`` count as
global), so IPv4-mapped and IPv4-compatible IPv6 addresses are unwrapped here and the
translation prefixes are denied by name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeAlias

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["AddressPolicy", "GuardedResolver", "IPAddress", "IPNetwork", "TargetRefused"]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Checked in order after unwrapping; the first match names the refusal.
_DENIED: Final[tuple[tuple[IPNetwork, str], ...]] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in (
        ("169.254.169.254/32", "metadata"),  # AWS, GCP, Azure, OpenStack
        ("100.100.100.200/32", "metadata"),  # Alibaba Cloud
        ("fd00:ec2::254/128", "metadata"),  # AWS over IPv6
        ("0.0.0.0/8", "unspecified"),  # "this network": 0.0.0.0 reaches localhost on Linux
        ("100.64.0.0/10", "cgnat"),
        ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
        ("64:ff9b::/96", "nat64"),
        ("64:ff9b:1::/48", "nat64"),
        ("::ffff:0:0:0/96", "nat64"),  # SIIT IPv4-translated
        ("2002::/16", "6to4"),
        ("2001::/32", "teredo"),
    )
)
_V4_COMPATIBLE_MAX: Final = 2**32
_NOT_AN_ADDRESS: Final = "not a canonical IP address"
# What inet_aton (and so getaddrinfo, and an egress proxy) reads as an IPv4 address: one to
# four numbers, decimal, octal or 0x-hex ("0x7f000001", "0x7f.1")
_INET_ATON: Final = re.compile(
    r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which target addresses a delivery may connect to.

    ``allowed_cidrs`` are allowed whatever they contain; ``allow_private`` allows everything.
    Otherwise an address is allowed only when it is global, not multicast, and not a
    translation or wrapping of another address.
    """

    allow_private: bool = False
    allowed_cidrs: tuple[IPNetwork, ...] = ()
    # IP-literal hosts already judged: they repeat on every attempt to the same webhook and
    # the answer never changes (a dict, not an lru_cache keyed by the policy: hashing a frozen
    # dataclass hashes each field, on every attempt)
    _literals: dict[str, str | None] = field(
        default_factory=dict, init=False, compare=False, hash=False, repr=False
    )

    @classmethod
    def from_config(cls, *, allow_private: bool, allowed_cidrs: Iterable[str]) -> AddressPolicy:
        """A policy from the ``security.*`` settings (CIDR strings, ValueError when malformed)."""
        cidrs = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allowed_cidrs)
        return cls(allow_private=allow_private, allowed_cidrs=cidrs)

    def refusal(self, ip: str | IPAddress) -> str | None:
        """None when ``ip`` may be connected to, else a short reason such as ``"loopback"``."""
        if isinstance(ip, str):
            try:
                ip = ipaddress.ip_address(ip)
            except ValueError:
                return None if self.allow_private else _NOT_AN_ADDRESS
        if self.allow_private:
            return None
        inner = _unwrap(ip)
        if self._escaped(ip) or self._escaped(inner):
            return None
        return _reason(inner)

    def literal_refusal(self, host: str) -> str | None:
        """For a URL host that looks like an IP literal (which the sender dials without a
        lookup): None when allowed or when ``host`` is a name, else the reason it is refused."""
        if ":" not in host and not (
            host.replace(".", "").isdigit() or (host[:1].isdigit() and _INET_ATON.fullmatch(host))
        ):
            return None  # a name: the GuardedResolver (or the egress proxy) decides
        try:
            return self._literals[host]
        except KeyError:
            pass
        reason = self.refusal(host)
        if len(self._literals) < _LITERALS_KEPT:
            self._literals[host] = reason
        return reason

    def _escaped(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.allowed_cidrs)


_LITERALS_KEPT = 4096


def _unwrap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    as_int = int(ip)
    if 1 < as_int < _V4_COMPATIBLE_MAX:  # ::a.b.c.d, but not :: or ::1
        return ipaddress.IPv4Address(as_int)
    return ip


def _reason(ip: IPAddress) -> str | None:
    for network, reason in _DENIED:
        if ip in network:
            return reason
    verdicts = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (not ip.is_global, "reserved"),
    )
    return next((reason for hit, reason in verdicts if hit), None)


class TargetRefused(OSError):  # noqa: N818  # an OSError: one more way a connect fails
    """Every address of a target is refused by the policy; names the host, an address and why."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        if host == address:
            message = f"target address {address} refused: {reason}"
        else:
            message = f"target {host} at address {address} refused: {reason}"
        super().__init__(
            f"{message} (security.allowed_cidrs or security.allow_private_targets allows it)"
        )


class GuardedResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver and drops every address the policy refuses.

    The sender resolves every host name through one of these; aiohttp is used for its
    resolver only (its HTTP client is not).

    Build it inside a running event loop (the default resolver binds to it).
    """

    def __init__(
        self,
        policy: AddressPolicy,
        inner: AbstractResolver | None = None,
        *,
        trusted_hosts: Iterable[str] = (),
    ) -> None:
        """``trusted_hosts`` resolve unchecked: the egress proxy's name, set by the operator."""
        self._policy = policy
        self._inner: AbstractResolver = inner if inner is not None else DefaultResolver()
        self._trusted = frozenset(trusted_hosts)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The allowed answers for ``host``; TargetRefused when there were answers but none is."""
        answers = await self._inner.resolve(host, port, family)
        if host in self._trusted:
            return answers
        allowed: list[ResolveResult] = []
        refused: TargetRefused | None = None
        for answer in answers:
            reason = self._policy.refusal(answer["host"])
            if reason is None:
                allowed.append(answer)
            elif refused is None:
                refused = TargetRefused(host, answer["host"], reason)
        if refused is not None and not allowed:
            raise refused
        return allowed

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()
