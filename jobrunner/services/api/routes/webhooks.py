"""A job's webhook delivery log (seed 001's "letzte Webhook-Logs")."""

from __future__ import annotations

from typing import Any

from litestar import Request

from jobrunner.services.api import readmodels, schemas
from jobrunner.services.api.dependencies import ctx_of, find_job
from jobrunner.services.api.reads import get
from jobrunner.services.api.security import principal_of

# A job's attempts are few (backoff over the retry window); a page would only hide the newest.
MAX_ATTEMPTS_SHOWN = 500


@get(
    "/api/jobs/{job_id:str}/webhooks",
    tags=["webhooks"],
    summary="A job's webhook deliveries and every attempt",
)
async def job_webhooks(request: Request[Any, Any, Any], job_id: str) -> schemas.WebhookLog:
    """Each webhook of the job with its state (``retrying``, ``delivered``, ``failed``), and its
    attempts (the newest 500): status code, time, error."""
    ctx = ctx_of(request)
    await find_job(ctx, job_id, principal_of(request))
    rows = await readmodels.webhook_attempts(ctx.pool, job_id, MAX_ATTEMPTS_SHOWN)
    return readmodels.webhook_log(job_id, rows)
