"""A webhook as a request names it: checked and turned into what the JobRequested event carries.

Shared by every route that starts jobs (one job, each job of a batch). For a batch, call
``webhook_problems`` per job to report them by index instead of raising.
"""

from __future__ import annotations

import msgspec

from jobrunner.common import webhookurl
from jobrunner.contracts import events
from jobrunner.services.api import schemas
from jobrunner.services.api.errors import ApiError


def webhook_problems(
    given: schemas.WebhookRequest, field: str = "webhook"
) -> tuple[events.WebhookTarget, list[webhookurl.WebhookError]]:
    """The event's webhook and every problem with it (none: it may be published)."""
    target = events.WebhookTarget(url=given.url, headers=dict(given.headers))
    return target, webhookurl.check(target, field)


def checked_webhook(given: schemas.WebhookRequest | None) -> events.WebhookTarget | None:
    """The request's webhook as the event carries it; 422 INVALID_WEBHOOK naming each problem.
    (Its address is checked when it is delivered: a name may point elsewhere by then.)"""
    if given is None:
        return None
    target, problems = webhook_problems(given)
    if problems:
        raise ApiError(
            422,
            "INVALID_WEBHOOK",
            "The webhook cannot be used: "
            + "; ".join(f"{p.field} {p.message}" for p in problems)
            + ".",
            fields=[msgspec.to_builtins(p) for p in problems],
        )
    return target
