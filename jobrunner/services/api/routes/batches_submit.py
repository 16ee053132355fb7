"""Submitting a batch: ``POST /api/jobs/batch`` and ``POST /api/batches`` (seed 004's path).

All or nothing: every job is checked first, and the batch's jobs start only once all of them are
stored (see ``batchpublish``). The answer, 201, comes once BatchSealed is stored.
"""

from __future__ import annotations

from typing import Any

import nats.errors
from litestar import Request, post
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import HTTPRouteHandler
from litestar.status_codes import HTTP_201_CREATED

from jobrunner.common import batchids
from jobrunner.common.settings import Settings
from jobrunner.services.api import jsonbody, schemas
from jobrunner.services.api.batchpublish import BatchEvents, publish_batch
from jobrunner.services.api.batchrequest import plan_batch
from jobrunner.services.api.context import READ_YOUR_WRITES_TIMEOUT
from jobrunner.services.api.dependencies import ctx_of
from jobrunner.services.api.errors import ApiError, try_again_later
from jobrunner.services.api.external import callback_tokens, callback_url
from jobrunner.services.api.idempotency import HEADER, Claim, check_key
from jobrunner.services.api.security import principal_of
from jobrunner.services.api.security.openapi import error_spec

PATHS = ["/api/jobs/batch", "/api/batches"]


async def submit_batch(request: Request[Any, Any, Any]) -> schemas.BatchCreated:
    """Check every job, then publish BatchRequested, each JobRequested and BatchSealed.

    A bad job refuses the whole batch (422 ``INVALID_BATCH``, each problem with the job's index
    and field). With an ``Idempotency-Key`` header, the same request sent again answers the same
    ids and creates nothing twice, finishing a batch whose first submission was cut off.
    """
    ctx = ctx_of(request)
    limit = ctx.settings.batch_max_body_bytes
    try:
        body = await request.body()
    except RequestEntityTooLarge:
        raise ApiError(
            413,
            "BODY_TOO_LARGE",
            f"A batch request may be at most {limit} bytes (batch_max_body_bytes); "
            "split the jobs into several batches.",
            limit=limit,
        ) from None
    plan = plan_batch(jsonbody.decode_any(body), ctx.job_types, ctx.settings.batch_max_jobs)
    principal = principal_of(request)
    key = request.headers.get(HEADER)
    try:
        if key is None:
            claim = Claim(batchids.new_batch_id(), resumed=False)
        else:
            claim = await ctx.idempotency.claim(
                principal.name, check_key(key), plan.fingerprint(), batchids.new_batch_id()
            )
        batch = BatchEvents(
            plan, claim.id, principal.name, await callback_tokens(request, key is not None)
        )
        seq = await publish_batch(ctx.js, ctx.names, ctx.slots, batch, claim.resumed)
    except nats.errors.MaxPayloadError:
        raise ApiError(
            413,
            "MESSAGE_TOO_LARGE",
            "A job of the batch makes an event larger than the NATS server's max_payload; "
            "send it with smaller parameters.",
        ) from None
    except (nats.errors.Error, TimeoutError) as exc:
        retry = (
            "send the same request again with the same Idempotency-Key to finish it"
            if key is not None
            else "send it again (with an Idempotency-Key, a retry can never create it twice)"
        )
        raise try_again_later(
            "EVENT_STORE_UNAVAILABLE",
            f"The event store did not confirm the whole batch ({type(exc).__name__}); none of "
            f"its jobs runs until it is complete: {retry}.",
            retry_after=1,
        ) from None
    await ctx.projection.wait_for(seq, READ_YOUR_WRITES_TIMEOUT)
    return schemas.BatchCreated(
        batch_id=batch.batch_id,
        batch_name=plan.batch_name,
        total_jobs=len(batch.jobs),
        job_ids=batch.job_ids,
        callbacks=[
            schemas.ExternalCallback(
                job_id=(job_id := batch.job_ids[index]),
                batch_index=index,
                callback_token=token.token,
                callback_url=callback_url(request, job_id),
            )
            for index, token in sorted(batch.callbacks.items())
        ],
    )


def batch_submit_routes(settings: Settings) -> list[HTTPRouteHandler]:
    """The submit handler with its own body limit (the app-wide 1 MiB is too small for batches)."""
    handler = post(
        PATHS,
        status_code=HTTP_201_CREATED,
        summary="Submit a batch of jobs, all or nothing",
        tags=["batches"],
        opt={"request_body": schemas.CreateBatch},  # read by hand; documented by this
        request_max_body_size=settings.batch_max_body_bytes,
        responses={
            413: error_spec("The body is over batch_max_body_bytes (BODY_TOO_LARGE)."),
            422: error_spec(
                "A job is not valid (INVALID_BATCH) or the Idempotency-Key was "
                "used for another request (IDEMPOTENCY_KEY_REUSED)."
            ),
            503: error_spec("NATS did not confirm the batch (EVENT_STORE_UNAVAILABLE)."),
        },
    )(submit_batch)
    return [handler]
