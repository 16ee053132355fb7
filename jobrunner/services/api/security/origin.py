"""Where a request comes from: the ``Host`` it names and the site that sent it.

Checked in every mode, ``--no-auth`` included, where nothing else stands between a web page the
operator happens to visit and the API:

- **DNS rebinding**: a hostile name resolved to 127.0.0.1 makes the browser treat the API as that
  site's own. The ``Host`` header still names the hostile site, so a request whose host is not
  one of ``allowed_hosts`` (by default the configured ``host``, plus the localhost names when it
  is a loopback address) is refused.
- **Cross-site requests**: a page on another site can POST a form or a ``text/plain`` body
  without a CORS preflight. A request that changes state must come from the same origin
  (``Sec-Fetch-Site`` / ``Origin``, when the browser sends them; API clients send neither) and,
  unless its route takes a form, carry JSON: no other body can be sent cross-site without a
  preflight that jobrunner never grants.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection

from jobrunner.services.api.errors import ApiError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True)
class HostPolicy:
    """The host names a request may name. ``any_host``: every name (``allowed_hosts = "*"``, or
    bound to every interface with no ``allowed_hosts`` given, where the names are unknown)."""

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()  # ``.example.com`` allows example.com and its subdomains
    any_host: bool = False

    @classmethod
    def from_settings(cls, allowed_hosts: str, host: str, loopback: bool) -> HostPolicy:
        entries = [e.strip().lower() for e in allowed_hosts.split(",") if e.strip()]
        if not entries:
            if host in WILDCARD_BINDS:
                return cls(frozenset(), any_host=True)
            names = {host.lower().strip("[]")}
            return cls(frozenset(names | LOOPBACK_NAMES if loopback else names))
        if "*" in entries:
            return cls(frozenset(), any_host=True)
        suffixes = tuple(e for e in entries if e.startswith("."))
        names = {e.strip("[]") for e in entries if not e.startswith(".")}
        return cls(frozenset(names | {s[1:] for s in suffixes}), suffixes)

    def allows(self, hostname: str) -> bool:
        return (
            self.any_host
            or hostname in self.names
            or any(hostname.endswith(suffix) for suffix in self.suffixes)
        )


# Every request names its host, nearly always one of a few: parsing it (``urlsplit``) was a few
# percent of a list request's CPU. A header the cache has not seen is parsed as before.
@lru_cache(maxsize=256)
def hostname_of(host_header: str) -> str | None:
    """The name in a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), or None."""
    try:
        parsed = urlsplit("//" + host_header)
        name = parsed.hostname
        parsed.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        return None
    if not name or any(c in host_header for c in "/?#@\\ "):
        return None
    return name


def check_host(connection: ASGIConnection[Any, Any, Any, Any], policy: HostPolicy) -> None:
    """ApiError 400 ``HOST_NOT_ALLOWED`` unless the request names an allowed host."""
    check_host_header(connection.headers.get("host", ""), policy)


def check_host_header(header: str, policy: HostPolicy) -> None:
    """``check_host`` for the ``Host`` header's value ("" when there is none)."""
    name = hostname_of(header)
    if name is not None and policy.allows(name):
        return
    raise ApiError(
        400,
        "HOST_NOT_ALLOWED",
        f"This server does not answer for the host {header!r}. Behind a proxy or under another "
        "name, add the name to the allowed_hosts setting.",
        host=header,
    )


def cross_site(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """True when the browser says the request comes from another origin."""
    site = connection.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = connection.headers.get("origin")
    if origin is None:
        return False  # not a browser's cross-site request (those always send Origin on POST)
    return urlsplit(origin).netloc.lower() != connection.headers.get("host", "").lower()


def check_same_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    if cross_site(connection):
        raise ApiError(
            403,
            "CSRF_FAILED",
            "Cross-site requests are not accepted: a request that changes something must come "
            "from jobrunner's own pages or from an API client.",
        )


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def has_body(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    length = connection.headers.get("content-length")
    if length is not None:
        return length.strip() != "0"
    return "transfer-encoding" in connection.headers


def check_body_encoding(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """ApiError 415 for a body under a Content-Encoding other than identity: no route decodes
    one, so a gzip body would be read as its compressed bytes, and a plain body labelled gzip
    would be taken as if the label were not there."""
    if not has_body(connection):
        return
    # Every line of the header: a second ``Content-Encoding`` line counts as much as the first.
    header = ",".join(connection.headers.getall("content-encoding", []))
    named = [e.strip() for e in header.split(",") if e.strip().lower() not in ("", "identity")]
    if named:
        raise ApiError(
            415,
            "UNSUPPORTED_CONTENT_ENCODING",
            f"Request bodies are read as they are sent: send this one uncompressed, without "
            f"'Content-Encoding: {', '.join(named)}'.",
        )


def check_json_body(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """ApiError 415 when a body that is not declared JSON is sent to a JSON route. (A body
    without a content type counts too: ``fetch`` sends a typeless Blob without a preflight.)"""
    if not has_body(connection):
        return
    content_type = connection.headers.get("content-type", "")
    if is_json(content_type):
        return
    raise ApiError(
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        "This address takes JSON: send the body with 'Content-Type: application/json'"
        + (f", not {content_type.split(';', 1)[0].strip()!r}." if content_type else "."),
    )
