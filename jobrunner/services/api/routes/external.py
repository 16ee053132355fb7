"""The reporting endpoint of external jobs: ``POST /api/external/jobs/{id}``.

It takes the job's callback token and nothing else. The route is outside the API's token and
session checks (``opt["callback"]``, see ``security/middleware.py``): an API token or a session
cookie opens nothing here, and the callback token is unknown to every other route, which only
knows API tokens and sessions.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, post
from litestar.status_codes import HTTP_200_OK
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from jobrunner.services.api import external, reports
from jobrunner.services.api.dependencies import ctx_of
from jobrunner.services.api.errors import ApiError, try_again_later
from jobrunner.services.api.security.openapi import error_spec

log = structlog.get_logger()


@post(
    "/api/external/jobs/{job_id:str}",
    status_code=HTTP_200_OK,
    tags=["external jobs"],
    summary="An external job's worker reports progress, lines, a result or an error",
    opt={"callback": True, "request_body": reports.Report},
    request_max_body_size=reports.MAX_REPORT_BYTES,
    security=[{"CallbackToken": []}],
    responses={
        401: error_spec("No callback token, or not this job's (INVALID_CALLBACK_TOKEN)."),
        409: error_spec(
            "The job ended (JOB_FINISHED), or still waits for its lock (JOB_WAITING, "
            "with Retry-After)."
        ),
        413: error_spec(
            "The report is over 256 KiB (BODY_TOO_LARGE), or its lines or its result would not "
            "fit one NATS message (REPORT_TOO_LARGE)."
        ),
        422: error_spec("The report is not valid (INVALID_REPORT, RESULT_TOO_LARGE)."),
        503: error_spec(
            "NATS does not answer (EVENT_STORE_UNAVAILABLE), or too many reports at "
            "once (REPORT_CONFLICT): send the report again, with Retry-After."
        ),
    },
)
async def report_external_job(
    request: Request[Any, Any, Any], job_id: str
) -> external.ReportAccepted:
    """The first report makes the job running; a ``result`` or an ``error`` ends it."""
    token = external.bearer_token(request.headers.get("authorization"))
    body = await request.body()
    report = reports.decode_report(body)
    try:
        return await external.accept(ctx_of(request), job_id, token, report)
    except MaxPayloadError as exc:
        # An event of the report (its result, say) over the server's max_payload: sending it
        # again can never pass, so not the 503 below.
        raise ApiError(
            413,
            "REPORT_TOO_LARGE",
            "The report makes an event larger than the NATS server accepts (its max_payload); "
            "send a smaller result or fewer lines per report.",
        ) from exc
    except (NatsError, TimeoutError, ConnectionError) as exc:
        # NATS away (or slow past a request's timeout): nothing is lost by asking the worker to
        # send the report again, and its report_id keeps it from being stored twice.
        log.warning("external report not stored", job_id=job_id, error=repr(exc))
        raise try_again_later(
            "EVENT_STORE_UNAVAILABLE",
            "The event store does not answer right now; send the report again shortly.",
            retry_after=1,
        ) from exc
