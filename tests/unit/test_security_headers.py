"""The browser protections every response carries (``add_security_headers``)."""

from __future__ import annotations

import asyncio
from typing import Any

from jobrunner.services.api.security.middleware import SECURITY_HEADERS, add_security_headers


def sent(headers: list[tuple[bytes, bytes]] | None) -> list[tuple[bytes, bytes]]:
    message: dict[str, Any] = {"type": "http.response.start", "status": 200}
    if headers is not None:
        message["headers"] = headers
    asyncio.run(add_security_headers(message, {}))  # type: ignore[arg-type]
    return list(message["headers"])


def test_every_response_carries_each_protection_once() -> None:
    """A response gets each security header once, after its own headers."""
    own = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    headers = sent(own)
    assert headers[:2] == own
    names = [name for name, _ in headers[2:]]
    assert names == [name.encode() for name in SECURITY_HEADERS]
    assert dict(headers)[b"x-frame-options"] == b"DENY"


def test_a_responses_own_protection_is_kept() -> None:
    """A response that sets its own Content-Security-Policy (any case) keeps it, alone."""
    headers = sent([(b"Content-Security-Policy", b"sandbox")])
    policies = [value for name, value in headers if name.lower() == b"content-security-policy"]
    assert policies == [b"sandbox"]
    assert len(headers) == len(SECURITY_HEADERS)


def test_a_response_without_headers_gets_them() -> None:
    """A response start that names no headers at all still gets the protections."""
    assert len(sent(None)) == len(SECURITY_HEADERS)


def test_the_body_is_left_alone() -> None:
    """A body message passes unchanged: the headers go only on the response's start."""
    message: dict[str, Any] = {"type": "http.response.body", "body": b"{}"}
    asyncio.run(add_security_headers(message, {}))  # type: ignore[arg-type]
    assert message == {"type": "http.response.body", "body": b"{}"}
