"""The metrics settings' syntax: ``metrics_address`` and ``metrics_peers`` (README "Metrics").
Kept apart from the exposition so that reading the settings imports no HTTP or metrics library."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


class MetricsAddressError(ValueError):
    pass


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9101`` for IPv6) as a (host, port) pair."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if (
        not sep
        or not host
        or not (port_text.isascii() and port_text.isdigit())
        or not 0 <= int(port_text) <= 65535
    ):
        raise MetricsAddressError(
            f"metrics_address = {address!r} must be host:port, such as 127.0.0.1:9101"
        )
    return host, int(port_text)


def parse_peers(text: str) -> dict[str, str]:
    """``name=http://host:port,...`` as {name: url}."""
    peers: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        parts = urlsplit(url.strip())
        if not sep or not name.strip() or parts.scheme not in ("http", "https") or not parts.netloc:
            raise MetricsAddressError(f"metrics_peers entry {item!r} must be name=http://host:port")
        peers[name.strip()] = url.strip().rstrip("/")
    return peers


def is_loopback_host(host: str) -> bool:
    """Whether a listener on ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
