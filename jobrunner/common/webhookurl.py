"""What a webhook may name: checked where it is given (a request, the job-types file).

Only the form is checked here: http or https, a host, no user info, bounded lengths, header names
that are HTTP tokens and values without line breaks, none of the headers the notifier sets
itself. Whether the host's address may be reached is decided at delivery time, after DNS
(``services/notifier/addresses.py``): a name can point elsewhere by then.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from jobrunner.contracts.events import (
    MAX_WEBHOOK_HEADER_CHARS,
    MAX_WEBHOOK_HEADERS,
    MAX_WEBHOOK_URL_CHARS,
    WebhookTarget,
)

# RFC 9110 token characters: a header name is one token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A header value travels as ASCII, without spaces at either end: the notifier's HTTP client
# cannot send anything else (it raised inside the notifier, which then tried the job's end again
# for ever, or failed every attempt at the receiver's cost until the retry window ended).
_BAD_HEADER_VALUE = re.compile(r"[^\x09\x20-\x7e]")
# Set by the notifier on every delivery; a client's header of the same name would let it forge
# or confuse what a receiver verifies.
RESERVED_HEADERS = frozenset(
    {
        "x-jobrunner-signature",
        "x-jobrunner-delivery",
        "x-jobrunner-event",
        "content-type",
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "user-agent",
    }
)


class WebhookError(msgspec.Struct, frozen=True, kw_only=True):
    field: str  # "webhook.url", "webhook.headers.<name>"
    code: str
    message: str


def check(target: WebhookTarget, field: str = "webhook") -> list[WebhookError]:
    """Every problem with a webhook's URL and headers (none: it may be stored)."""
    errors = [
        WebhookError(field=f"{field}.url", code=code, message=message)
        for code, message in url_problems(target.url)
    ]
    if len(target.headers) > MAX_WEBHOOK_HEADERS:
        errors.append(
            WebhookError(
                field=f"{field}.headers",
                code="TOO_MANY_HEADERS",
                message=f"at most {MAX_WEBHOOK_HEADERS} headers",
            )
        )
    for name, value in target.headers.items():
        where = f"{field}.headers.{name[:64]}"
        if not _TOKEN.match(name):
            errors.append(
                WebhookError(field=where, code="INVALID_HEADER_NAME", message="is no header name")
            )
        elif name.lower() in RESERVED_HEADERS:
            errors.append(
                WebhookError(
                    field=where,
                    code="RESERVED_HEADER",
                    message="is set by jobrunner on every delivery and cannot be given",
                )
            )
        if len(name) + len(value) > MAX_WEBHOOK_HEADER_CHARS:
            errors.append(
                WebhookError(
                    field=where,
                    code="TOO_LONG",
                    message=f"name and value must be at most {MAX_WEBHOOK_HEADER_CHARS} characters",
                )
            )
        elif _BAD_HEADER_VALUE.search(value) or value != value.strip(" \t"):
            errors.append(
                WebhookError(
                    field=where,
                    code="INVALID_HEADER_VALUE",
                    message="must be ASCII, without line breaks, control characters or spaces at "
                    "either end",
                )
            )
    return errors


def url_problems(url: str) -> list[tuple[str, str]]:
    """``(code, sentence)`` for each reason ``url`` cannot be a webhook's address."""
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        return [("TOO_LONG", f"must be at most {MAX_WEBHOOK_URL_CHARS} characters")]
    if _BAD_VALUE.search(url) or " " in url or "\t" in url:
        return [("INVALID_URL", "must not contain spaces or control characters")]
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port out of range or not a number
        httpx.URL(url)  # what the notifier's HTTP client makes of it: a host it cannot encode
    except (ValueError, httpx.InvalidURL) as exc:
        return [("INVALID_URL", f"is no URL ({exc})")]
    problems: list[tuple[str, str]] = []
    if parts.scheme not in ("http", "https"):
        problems.append(("UNSUPPORTED_SCHEME", "must start with http:// or https://"))
    if not parts.hostname:
        problems.append(("MISSING_HOST", "must name a host"))
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        problems.append(
            ("USERINFO_NOT_ALLOWED", "must not carry a user or password; use headers instead")
        )
    if port == 0:
        problems.append(("INVALID_URL", "port 0 cannot be reached"))
    return problems


def public_url(url: str) -> str:
    """The URL as shown in events, logs and pages: no user info, no query, no fragment (any of
    them may carry a secret token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return shown[:MAX_WEBHOOK_URL_CHARS]
