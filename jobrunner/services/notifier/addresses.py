"""Which addresses a webhook may reach, decided after DNS, at delivery time.

A webhook URL is given by whoever may start a job: without this check it would make the notifier
reach what only the installation's own network can (a database, a cloud's metadata service at
169.254.169.254, the NATS monitoring port on loopback). So every address a host name resolves to
is checked, and the connection goes to the checked address itself: no second lookup could answer
something else (DNS rebinding). Refused by default: loopback, private, carrier-grade NAT,
link-local, multicast, reserved, unspecified and documentation ranges, in IPv4 and IPv6, and IPv6
forms that carry an IPv4 address (mapped, 6to4, NAT64) are judged by that address. The setting
``webhook_allow_hosts`` opens host names, addresses or networks an installation needs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not covered by the ipaddress module's flags on every Python version: carrier-grade NAT and the
# cloud metadata addresses (AWS/GCP/Azure IPv4 is link-local already; AWS's IPv6 one is not),
# and the ranges below.
_EXTRA_REFUSED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    # IPv6 site-local (deprecated, RFC 3879, but an internal network wherever still set up),
    # which Python counts as global; and the IPv6 documentation range of RFC 9637.
    ipaddress.ip_network("fec0::/10"),
    ipaddress.ip_network("3fff::/20"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """The host resolves to an address webhooks may not reach (or to none)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AddressPolicy:
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allow: str) -> AddressPolicy:
        """From the ``webhook_allow_hosts`` setting: comma-separated host names, addresses and
        networks. Raises ValueError naming an entry that is none of them."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in allow.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or not all(part for part in entry.split(".")):
                raise ValueError(f"webhook_allow_hosts: {raw.strip()!r} is no host or network")
            hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached (a short reason), or None when it may."""
        if any(address in network for network in self.networks):
            return None
        judged = embedded_ipv4(address) or address
        if any(judged in network for network in self.networks):
            return None
        return internal_reason(judged)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def internal_reason(address: IPAddress) -> str | None:
    """Why ``address`` is internal, or None for a public one."""
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("internal", any(address in network for network in _EXTRA_REFUSED)),
        ("not globally reachable", not address.is_global),
    )
    for reason, applies in checks:
        if applies:
            return reason
    return None


async def checked_addresses(host: str, port: int, policy: AddressPolicy) -> list[IPAddress]:
    """The addresses of ``host`` that may be reached, in the resolver's order.

    Raises :class:`AddressRefused` when the name does not resolve (``WEBHOOK_DNS_FAILED``, worth
    a retry) or when any address it resolves to is refused (``WEBHOOK_ADDRESS_REFUSED``): a name
    with one internal address among public ones is refused whole, since which one a client
    would use is up to chance.
    """
    literal = _literal(host)
    if literal is not None:
        found = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError) as exc:
            raise AddressRefused(
                "WEBHOOK_DNS_FAILED", f"The host {host!r} could not be resolved: {exc}."
            ) from None
        found = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in found:
                found.append(address)
        if not found:
            raise AddressRefused("WEBHOOK_DNS_FAILED", f"The host {host!r} has no address.")
    if policy.host_allowed(host):
        return found
    for address in found:
        reason = policy.refusal(address)
        if reason is not None:
            article = "an" if reason[0] in "aeiou" else "a"  # an unspecified, an internal
            raise AddressRefused(
                "WEBHOOK_ADDRESS_REFUSED",
                f"The host {host!r} resolves to {address}, {article} {reason} address webhooks "
                "may not reach; an installation opens it with the setting webhook_allow_hosts.",
            )
    return found


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
