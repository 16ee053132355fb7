"""Delivering one ended job's webhooks: each retried with backoff until delivered or given up.

Every attempt is published as a WebhookAttempted event before the next one starts, with the
event id ``<delivery id>-<attempt>``: a notifier that takes over a job (its first notifier died)
reads the job's last attempt and goes on from there, with the same delivery id and the next
attempt number, inside the same retry window. A job's webhooks are delivered one after the other,
in their order, which is what makes the last attempt enough to know where to go on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from jobrunner.common import metrics, webhookurl
from jobrunner.common.webhookurl import public_url
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, WebhookOutcome, WebhookTarget
from jobrunner.services.notifier import payload, signature
from jobrunner.services.notifier.sender import AttemptResult, Sender
from jobrunner.services.notifier.targets import Target

log = structlog.get_logger()

JITTER = 0.25  # a wait is lengthened by up to this share, so receivers are not hit in step


@dataclass(frozen=True)
class RetryPolicy:
    window_seconds: float
    first_wait: float
    longest_wait: float

    def wait_after(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (from 1), jitter included."""
        base = min(self.longest_wait, self.first_wait * 2.0 ** min(attempt - 1, 30))
        return base * (1 + random.uniform(0, JITTER))


@dataclass(frozen=True)
class Resume:
    """Where a job's delivery goes on: the webhook, its next attempt and its window's start."""

    index: int = 0
    attempt: int = 1
    first_attempt_at: datetime | None = None


def resume_after(last: events.WebhookAttempted | None) -> Resume:
    if last is None:
        return Resume()
    if last.outcome.is_final:
        return Resume(last.webhook_index + 1)
    return Resume(last.webhook_index, last.attempt + 1, last.first_attempt_at or last.occurred_at)


Publish = Callable[[events.WebhookAttempted], Awaitable[None]]


class JobDelivery:
    """The webhooks of one ended job."""

    def __init__(
        self,
        sender: Sender,
        policy: RetryPolicy,
        publish: Publish,
        stop: asyncio.Event,
    ) -> None:
        self.sender = sender
        self.policy = policy
        self.publish = publish
        self.stop = stop

    async def deliver(
        self,
        request: events.JobRequested,
        end: events.StatusChanged,
        progress: events.ProgressReported | None,
        targets: list[Target],
        resume: Resume,
    ) -> bool:
        """Deliver every target from ``resume`` on; False when stopped before the end."""
        for target in targets[resume.index :]:
            first = resume if target.index == resume.index else Resume(target.index)
            if not await self._deliver_one(request, end, progress, target, first):
                return False
        return True

    async def _deliver_one(
        self,
        request: events.JobRequested,
        end: events.StatusChanged,
        progress: events.ProgressReported | None,
        target: Target,
        resume: Resume,
    ) -> bool:
        delivery_id = signature.delivery_id(end.job_id, target.index)
        body = payload.build(request, end, progress, delivery_id)
        headers = {
            **target.headers,
            "Content-Type": "application/json",
            signature.DELIVERY_HEADER: delivery_id,
            signature.EVENT_HEADER: payload.event_name(end),
        }
        if target.secret is not None:
            headers[signature.SIGNATURE_HEADER] = signature.sign(target.secret, body)
        attempt = resume.attempt
        first_at = resume.first_attempt_at
        while True:
            problems = webhookurl.check(WebhookTarget(url=target.url, headers=target.headers))
            if problems:
                # Refused by the API and the job-types file; an event written by something else
                # may carry it. Failed for good, not raised: a raise left the job's end
                # unacknowledged, handed out again after every ack wait, for ever.
                result = AttemptResult(
                    None,
                    "WEBHOOK_INVALID",
                    "The webhook cannot be sent: "
                    + "; ".join(f"{p.field} {p.message}" for p in problems),
                    0.0,
                    False,
                )
            elif target.secret_missing is not None:
                result = AttemptResult(
                    None,
                    "WEBHOOK_SECRET_MISSING",
                    f"The job type signs this webhook with the secret in ${target.secret_missing}"
                    ", which the notifier's environment does not set.",
                    0.0,
                    False,
                )
            else:
                result = await self.sender.post(target.url, headers, body)
            now = events.utcnow()
            first_at = first_at or now
            remaining = self.policy.window_seconds - (now - first_at).total_seconds()
            if result.delivered:
                outcome = WebhookOutcome.DELIVERED
            elif not result.retryable or remaining <= 0:
                outcome = WebhookOutcome.FAILED
            else:
                outcome = WebhookOutcome.RETRYING
            await self.publish(
                events.WebhookAttempted(
                    job_id=end.job_id,
                    event_id=f"{delivery_id}-{attempt}",
                    delivery_id=delivery_id,
                    webhook_index=target.index,
                    url=public_url(target.url),
                    attempt=attempt,
                    outcome=outcome,
                    status_code=result.status_code,
                    error=(
                        ErrorInfo(code=result.error_code, message=result.error_message or "")
                        if result.error_code
                        else None
                    ),
                    duration_ms=result.duration_ms,
                    first_attempt_at=first_at,
                )
            )
            metrics.WEBHOOK_ATTEMPTS.labels(outcome.value).inc()
            log.info(
                "webhook attempted",
                delivery_id=delivery_id,
                url=public_url(target.url),
                attempt=attempt,
                outcome=outcome.value,
                status_code=result.status_code,
                error_code=result.error_code,
            )
            if outcome.is_final:
                return True
            wait = min(self.policy.wait_after(attempt), remaining)
            try:
                await asyncio.wait_for(self.stop.wait(), wait)
            except TimeoutError:
                pass
            else:
                return False  # the notifier stops: another one goes on from this attempt
            attempt += 1
