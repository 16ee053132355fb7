"""``GET /api/jobs/{id}/events``: a job's raw event history from JetStream, in order, paged."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.params import Parameter

from jobrunner.common import audit
from jobrunner.services.api import readmodels
from jobrunner.services.api.dependencies import ctx_of
from jobrunner.services.api.errors import job_not_found
from jobrunner.services.api.queryparams import Query
from jobrunner.services.api.reads import get
from jobrunner.services.api.security import principal_of
from jobrunner.services.api.sse import MAX_STREAM_SEQ

MAX_EVENTS_PAGE = 1000


class EventPage(msgspec.Struct):
    job_id: str
    items: list[audit.StoredEvent]
    next_after: int | None  # pass as ?after= for the next page; null on the last page


@get("/api/jobs/{job_id:str}/events", tags=["audit"], summary="A job's raw event history")
async def job_events(
    request: Request[Any, Any, Any],
    job_id: str,
    after: Annotated[str | None, Parameter(description="stream sequence to start after")] = None,
    limit: Annotated[
        str | None, Parameter(description=f"events per page, 1-{MAX_EVENTS_PAGE} (default 100)")
    ] = None,
) -> EventPage:
    """Every stored event of the job, oldest first: stream sequence, subject, storage time and
    the event as published. Read from JetStream, so it also answers for jobs the read models
    no longer hold, as long as the stream still has their events."""
    ctx = ctx_of(request)
    query = Query(request.query_params, ("after", "limit"))
    # The read models' bound (a bigint stream_seq), not JetStream's: see MAX_STREAM_SEQ.
    after_seq = query.integer("after", 0, 0, MAX_STREAM_SEQ) or 0
    page_size = query.integer("limit", 100, 1, MAX_EVENTS_PAGE) or 100
    if not audit.JOB_ID_RE.match(job_id):
        raise job_not_found(job_id)
    row = await readmodels.get_job_row(ctx.pool, job_id)
    principal = principal_of(request)
    if principal.own_jobs_only and (row is None or not principal.can_see(row)):
        raise job_not_found(job_id)
    start = max(after_seq + 1, row["first_seq"] if row is not None else 1)
    items = await audit.read_events(
        ctx.js, ctx.names, job_id=job_id, start_seq=start, limit=page_size + 1
    )
    if not items and row is None and after_seq == 0:
        raise job_not_found(job_id)
    more = len(items) > page_size
    items = items[:page_size]
    return EventPage(job_id=job_id, items=items, next_after=items[-1].stream_seq if more else None)
