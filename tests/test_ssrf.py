"""The target address policy (R15): the rule, the guarded resolver, and the sender using both."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from dispatcher.ssrf import AddressPolicy, GuardedResolver, TargetRefused
from tests.target import Target

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.helpers import AnySender, MakeSender

DEFAULT = AddressPolicy()

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    ("100.100.100.200", "metadata"),
    ("0.0.0.0", "unspecified"),  # noqa: S104  # an address to refuse, not to bind
    ("0.1.2.3", "unspecified"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.1", "private"),  # documentation range
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", "private"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::127.0.0.1", "loopback"),
    ("::10.0.0.1", "private"),
    ("64:ff9b::7f00:1", "nat64"),
    ("64:ff9b::808:808", "nat64"),  # even a public address: the translator is on-path
    ("64:ff9b:1::a00:1", "nat64"),
    ("::ffff:0:7f00:1", "nat64"),
    ("2002:7f00:1::", "6to4"),
    ("2002:808:808::1", "6to4"),
    ("2001::1", "teredo"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fd00:ec2::254", "metadata"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
]

ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_non_global_addresses_are_refused(address: str, reason: str) -> None:
    """Loopback, private, link-local, metadata, multicast and wrapped forms are refused."""
    assert DEFAULT.refusal(address) == reason
    assert DEFAULT.refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_global_addresses_are_allowed(address: str) -> None:
    """Public unicast addresses, IPv4-mapped ones included, are allowed."""
    assert DEFAULT.refusal(address) is None


def test_allowed_cidrs_escape_only_their_range() -> None:
    """An allowed CIDR admits its addresses, in mapped form too, and nothing next to it."""
    policy = AddressPolicy.from_config(allow_private=False, allowed_cidrs=["10.20.0.0/16"])
    assert policy.refusal("10.20.1.2") is None
    assert policy.refusal("::ffff:10.20.1.2") is None
    assert policy.refusal("10.21.0.1") == "private"
    assert policy.refusal("127.0.0.1") == "loopback"


def test_allowed_cidrs_for_ipv6() -> None:
    """An IPv6 CIDR escape works for unique local addresses."""
    policy = AddressPolicy(allowed_cidrs=(ipaddress.ip_network("fd00:1::/32"),))
    assert policy.refusal("fd00:1::5") is None
    assert policy.refusal("fd00:2::5") == "private"


@pytest.mark.parametrize("address", [a for a, _ in REFUSED])
def test_allow_private_allows_everything(address: str) -> None:
    """allow_private_targets lets every address through."""
    assert AddressPolicy(allow_private=True).refusal(address) is None


def test_from_config_rejects_a_malformed_cidr() -> None:
    """A CIDR that does not parse is a ValueError for the config loader to report."""
    with pytest.raises(ValueError, match="does not appear"):
        AddressPolicy.from_config(allow_private=False, allowed_cidrs=["10.0.0.0/33x"])


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("example.com", None),
        ("localhost", None),  # a name: the resolver decides
        ("8.8.8.8", None),
        ("127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "loopback"),
        ("127.1", "not a canonical IP address"),
        ("2130706433", "not a canonical IP address"),
        ("017700000001", "not a canonical IP address"),
        ("0x7f000001", "not a canonical IP address"),  # hex: inet_aton reads it as 127.0.0.1
        ("0x7f.0.0.1", "not a canonical IP address"),
        ("1.0x0.0.1", "not a canonical IP address"),
        ("0xcafe.example", None),  # a name: not every label is a number
        ("fe80::1%25eth0", "link-local"),
    ],
)
def test_literal_hosts(host: str, reason: str | None) -> None:
    """URL hosts that aiohttp would dial without resolving are judged, legacy forms refused."""
    assert DEFAULT.literal_refusal(host) == reason


class _Answers(AbstractResolver):
    """A DNS stand-in whose answers the test changes between lookups."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        del family  # the answers are whatever the test set
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_resolver_drops_refused_answers() -> None:
    """Refused answers are dropped and allowed ones are kept, in order."""
    resolver = GuardedResolver(DEFAULT, _Answers("10.0.0.1", "8.8.8.8", "::1", "1.1.1.1"))
    answers = await resolver.resolve("mixed.example", 443)
    assert [a["host"] for a in answers] == ["8.8.8.8", "1.1.1.1"]


async def test_resolver_rechecks_changed_answers() -> None:
    """A name that starts resolving to a private address is refused at the next lookup."""
    dns = _Answers("8.8.8.8")
    resolver = GuardedResolver(DEFAULT, dns)
    assert len(await resolver.resolve("rebind.example", 80)) == 1
    dns.addresses = ["169.254.169.254"]
    with pytest.raises(TargetRefused) as refused:
        await resolver.resolve("rebind.example", 80)
    assert refused.value.reason == "metadata"
    assert "rebind.example" in str(refused.value)
    assert "169.254.169.254" in str(refused.value)


async def test_resolver_refuses_localhost() -> None:
    """The real resolver's answers for localhost are all refused, naming host and address."""
    resolver = GuardedResolver(DEFAULT)
    with pytest.raises(TargetRefused, match=r"target localhost at address .* refused: loopback"):
        await resolver.resolve("localhost", 80)
    await resolver.close()


@pytest.fixture
async def canary() -> AsyncIterator[Target]:
    """A listener on 127.0.0.1 that counts every connection reaching it."""
    async with Target() as target:
        yield target


def _sender(make_sender: MakeSender, policy: AddressPolicy) -> AnySender:
    return make_sender(timeout_s=2, concurrency=4, policy=policy, user_agent="dispatcher/test")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]", "127.1"])
async def test_sender_refuses_loopback_targets(
    make_sender: MakeSender, canary: Target, host: str
) -> None:
    """By default a loopback target is refused before any connection reaches it."""
    async with _sender(make_sender, DEFAULT) as sender:
        outcome = await sender.attempt(f"http://{host}:{canary.port}/hook", b"{}", {})
    assert outcome.status is None
    assert outcome.error is not None
    assert "refused" in outcome.error
    assert not outcome.timed_out
    assert canary.connections == 0


async def test_sender_refusal_names_address_and_reason(
    make_sender: MakeSender, canary: Target
) -> None:
    """The refusal of a literal names the address and the reason."""
    async with _sender(make_sender, DEFAULT) as sender:
        outcome = await sender.attempt(canary.url(), b"{}", {})
    assert outcome.error == (
        "target address 127.0.0.1 refused: loopback "
        "(security.allowed_cidrs or security.allow_private_targets allows it)"
    )


@pytest.mark.parametrize(
    "policy",
    [
        AddressPolicy(allow_private=True),
        AddressPolicy.from_config(allow_private=False, allowed_cidrs=["127.0.0.0/8", "::1/128"]),
    ],
)
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_sender_reaches_loopback_when_allowed(
    make_sender: MakeSender, canary: Target, policy: AddressPolicy, host: str
) -> None:
    """allow_private_targets or a matching allowed CIDR lets the delivery through."""
    async with _sender(make_sender, policy) as sender:
        outcome = await sender.attempt(f"http://{host}:{canary.port}/hook", b"{}", {})
    assert outcome.status == 200
    assert canary.count("/hook") == 1
