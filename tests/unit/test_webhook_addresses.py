"""Which addresses a webhook may reach: internal ones refused in every spelling, unless allowed."""

from __future__ import annotations

import asyncio
import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.services.notifier.addresses import (
    AddressPolicy,
    AddressRefused,
    checked_addresses,
    embedded_ipv4,
)

DEFAULT = AddressPolicy()

REFUSED = [
    "127.0.0.1",
    "127.255.0.9",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254",  # cloud metadata
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "fec0::1",  # IPv6 site-local: deprecated, still an internal network where configured
    "feff:ffff::1",
    "3fff::1",  # IPv6 documentation (RFC 9637), newer than Python 3.11's tables
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused_by_default(address: str) -> None:
    """Loopback, private, link-local, metadata, multicast and the like: refused."""
    assert DEFAULT.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_may_be_reached(address: str) -> None:
    """A public address (also IPv4-mapped) is not refused."""
    assert DEFAULT.refusal(ipaddress.ip_address(address)) is None


def test_allowed_network_opens_its_addresses_only() -> None:
    """webhook_allow_hosts = "10.20.0.0/16" opens that network, not its neighbour."""
    policy = AddressPolicy.parse("10.20.0.0/16, hooks.internal")
    assert policy.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("10.21.0.1")) == "private"
    assert policy.host_allowed("Hooks.Internal.")


def test_allow_list_entry_that_is_no_host_is_refused() -> None:
    """A typo in webhook_allow_hosts stops the notifier at start, naming the entry."""
    with pytest.raises(ValueError, match=re.escape("10.0.0.0/99")):
        AddressPolicy.parse("10.0.0.0/99")


@settings(deadline=None, max_examples=300)
@given(st.ip_addresses(v=4))
def test_every_ipv4_address_is_judged_alike_in_its_ipv6_forms(
    address: ipaddress.IPv4Address,
) -> None:
    """An IPv4 address and its IPv4-mapped IPv6 form get the same answer."""
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert embedded_ipv4(mapped) == address
    assert (DEFAULT.refusal(mapped) is None) == (DEFAULT.refusal(address) is None)


@settings(deadline=None, max_examples=300)
@given(st.ip_addresses())
def test_a_reachable_address_is_globally_routable(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    """Whatever the address, one the default policy lets through is a global one."""
    if DEFAULT.refusal(address) is None:
        assert (embedded_ipv4(address) or address).is_global


def test_localhost_name_is_refused_after_resolution() -> None:
    """http://localhost/... resolves to loopback: refused, the address named."""
    with pytest.raises(AddressRefused) as refused:
        asyncio.run(checked_addresses("localhost", 80, DEFAULT))
    assert refused.value.code == "WEBHOOK_ADDRESS_REFUSED"
    assert "loopback" in str(refused.value)


@pytest.mark.parametrize(
    ("host", "named"),
    [
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("10.0.0.1", "a private address"),
    ],
)
def test_the_refusal_names_the_kind_of_address_in_english(host: str, named: str) -> None:
    """Before: "0.0.0.0, a unspecified address"."""
    with pytest.raises(AddressRefused) as refused:
        asyncio.run(checked_addresses(host, 80, DEFAULT))
    assert f"resolves to {host}, {named} webhooks may not reach" in str(refused.value)


def test_allowed_host_name_skips_the_address_check() -> None:
    """A host name on the allow-list may resolve to an internal address."""
    policy = AddressPolicy.parse("localhost")
    found = asyncio.run(checked_addresses("localhost", 80, policy))
    assert all(a.is_loopback for a in found)


def test_unresolvable_name_is_a_dns_failure() -> None:
    """A name that does not resolve: WEBHOOK_DNS_FAILED (retried: DNS may come back)."""
    with pytest.raises(AddressRefused) as refused:
        asyncio.run(checked_addresses("no-such-host.invalid", 80, DEFAULT))
    assert refused.value.code == "WEBHOOK_DNS_FAILED"
