"""Which webhooks a job notifies, and with which secret each is signed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jobrunner.common.jobtypes import JobType
from jobrunner.common.webhookurl import RESERVED_HEADERS
from jobrunner.contracts import events


@dataclass(frozen=True)
class Target:
    index: int
    url: str
    headers: dict[str, str]
    # None: unsigned (the installation has no secret); a type's secret_env that is not set
    # makes the delivery fail with secret_missing naming it, rather than go out unsigned.
    secret: str | None
    secret_missing: str | None = None

    def __repr__(self) -> str:  # never a header value or a secret in a log line
        return f"Target(index={self.index}, url=<hidden>)"


def client_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of a webhook without any the notifier sets itself (the API refuses them too;
    an event written by something else must not override the signature either)."""
    return {k: v for k, v in headers.items() if k.lower() not in RESERVED_HEADERS}


def targets_of(
    request: events.JobRequested,
    job_type: JobType | None,
    secret: str,
    environ: Mapping[str, str],
) -> list[Target]:
    """The request's own webhook first (index 0 when there is one), then the type's in order.

    The type's webhooks come from this notifier's job-types file, read when it started.
    """
    found: list[Target] = []
    installation_secret = secret or None
    if request.webhook is not None:
        found.append(
            Target(
                len(found),
                request.webhook.url,
                client_headers(request.webhook.headers),
                installation_secret,
            )
        )
    for hook in job_type.webhooks if job_type is not None else []:
        own = None
        missing = None
        if hook.secret_env:
            own = environ.get(hook.secret_env) or None
            missing = None if own else hook.secret_env
        found.append(
            Target(
                len(found),
                hook.url,
                client_headers(hook.headers),
                own if hook.secret_env else installation_secret,
                missing,
            )
        )
    return found
