"""How a receiver knows a delivery came from this installation, and which one it is."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Jobrunner-Signature"
DELIVERY_HEADER = "X-Jobrunner-Delivery"
EVENT_HEADER = "X-Jobrunner-Event"


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the body>``, as GitHub's webhooks sign theirs."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does (README shows it): constant-time comparison."""
    return hmac.compare_digest(sign(secret, body), header)


def delivery_id(job_id: str, webhook_index: int) -> str:
    """The same for every attempt of one webhook of one job, whichever notifier makes it."""
    return hashlib.sha256(f"{job_id}:webhook:{webhook_index}".encode()).hexdigest()[:32]
