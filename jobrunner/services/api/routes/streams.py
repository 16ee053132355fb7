"""Live streams over Server-Sent Events (protocol in README "SSE protocol")."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from litestar import Request, get
from litestar.response import Stream

from jobrunner.common.lastevent import last_readable
from jobrunner.contracts import events
from jobrunner.services.api import directwrite, readmodels, sse
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.dependencies import as_stored, ctx_of
from jobrunner.services.api.errors import job_not_found
from jobrunner.services.api.security import Principal, principal_of
from jobrunner.services.api.streamlookups import UNREADABLE, StreamLookups, stream_lookups


@get(
    ["/jobs/stream/{job_id:str}", "/api/jobs/{job_id:str}/stream"],
    tags=["streams"],
    summary="A job's lines, status changes and progress, live",
    media_type="text/event-stream",
)
async def job_event_stream(request: Request[Any, Any, Any], job_id: str) -> Stream:
    ctx = ctx_of(request)
    ending_read: asyncio.Future[tuple[int, events.StatusChanged] | None] | None = None
    if "last-event-id" in request.headers:
        # The job's last status is read from JetStream while its row is looked up: one wait,
        # not two. Only for a resume: a stream without one starts at the job's request, and
        # every status of the job comes after it, so none can have ended it before.
        ending_read = asyncio.ensure_future(sse.last_status(ctx.js, ctx.names, job_id))
    try:
        return await _stream(request, ctx, job_id, ending_read)
    finally:
        if ending_read is not None:
            if not ending_read.done():
                ending_read.cancel()  # the request was refused before it was needed
            elif not ending_read.cancelled():
                ending_read.exception()  # read, so that a refused request leaves no error unseen


async def _stream(
    request: Request[Any, Any, Any],
    ctx: ApiContext,
    job_id: str,
    ending_read: asyncio.Future[tuple[int, events.StatusChanged] | None] | None,
) -> Stream:
    row = await streamable_job(ctx, job_id, principal_of(request))
    resume = sse.ResumePoint.parse(request.headers.get("last-event-id"))
    if resume is not None:
        # No event has that id yet: the client did not get it from us. Refused, so that no
        # client ever waits for events that may never be its job's.
        await sse.refuse_an_id_ahead(ctx.js, ctx.names, resume.stream_seq, "last-event-id")
    start = max(resume.next_seq, row["first_seq"]) if resume else row["first_seq"]
    # Whether the stream already ended before the resume point is asked of JetStream itself:
    # the read model may not have caught up with the end a client has just seen.
    already_done: dict[str, Any] | None = None
    ending = await ending_read if ending_read is not None else None
    if ending is not None and ending[1].status.is_terminal and ending[0] < start:
        already_done = sse.status_payload(ending[1])
    # A job with a short past (a job just started, the usual first viewer) has its feed started
    # at the client's start: no separate history read before the first line. A row its feed
    # kept has no count: that feed runs already (or, gone meanwhile, a new one starts at the end).
    settings = ctx.settings
    feed_from = (
        start
        if "log_count" in row
        and sse.short_past(
            row["log_count"], settings.max_line_bytes, settings.sse_client_buffer_bytes
        )
        else None
    )
    return Stream(
        sse.job_stream(
            ctx.settings.sse_retry_ms,
            ctx.fanout,
            job_id,
            start,
            resume,
            already_done,
            feed_from,
            directwrite.chunk_writer(request.scope),
            row,
        ),
        media_type="text/event-stream",
        headers=sse.SSE_HEADERS,
    )


async def streamable_job(ctx: ApiContext, job_id: str, principal: Principal) -> Mapping[str, Any]:
    """What the stream needs of the job (``first_seq``, ``log_count``, ``requested_by``): its
    row, or, for a job whose request the projector has not applied yet (a client that asked
    its POST not to wait for the read models), its JobRequested in JetStream. 404 when there
    is neither, or ``principal`` may not see it. A job this API follows already (a viewer
    arriving after its first) is known from its feed (``Fanout.known_row``), without a read.
    With Postgres away, the job is known from its JobRequested alone: a live job is followed
    through NATS, and its viewers' reconnects must not wait for the read models to return. So
    are the reads bounded as a live stream's (streamlookups.py): a frozen Postgres counts as away
    after ``stream_read_timeout_seconds``, not the read pool's deadline, and tables whose
    version is not known are not read. A job without a JobRequested then is 503 (Postgres'
    error), not 404: only a row or a JobRequested shows that the caller may not see the job."""
    row: Mapping[str, Any] | None = ctx.fanout.known_row(job_id)
    lookups = stream_lookups(ctx)
    if row is None:
        posted = ctx.posted.get(job_id, ctx.projection.applied)
        if posted is not None:
            # Started here a moment ago (the usual first viewer): known without a read. Nothing
            # of the job is projected yet, so it is taken as having no past to speak of.
            row = {"first_seq": posted.seq, "log_count": 0, "requested_by": posted.requested_by}
        else:
            # The first viewers of a job arrive together, before its feed keeps the row:
            # one read for all of them, not one each (sharedreads).
            stored = as_stored(job_id)
            try:
                row = await ctx.job_rows.read(
                    stored, lambda: readmodels.get_job_row(lookups, stored)
                )
            except UNREADABLE:
                requested = await _requested_in_stream(ctx, job_id)
                if requested is None:
                    # Neither source can tell: the read models may hold the job (its request
                    # aged out of JetStream). 503, not 404: a browser gives a 404'd job up.
                    raise
                return _visible_to(principal, job_id, requested)
        if row is None:
            row = await _requested(ctx, lookups, job_id)
    return _visible_to(principal, job_id, row)


def _visible_to(
    principal: Principal, job_id: str, row: Mapping[str, Any] | None
) -> Mapping[str, Any]:
    if row is None or not principal.can_see(row):
        raise job_not_found(job_id)
    return row


async def _requested(
    ctx: ApiContext, lookups: StreamLookups, job_id: str
) -> Mapping[str, Any] | None:
    stored = await _job_request(ctx, job_id)
    if stored is None:
        return None
    seq, event = stored
    try:
        applied = await readmodels.applied_seq(lookups)
        if seq <= applied:
            # Applied meanwhile, or applied and gone (pruned, set aside): the read model decides.
            return await readmodels.get_job_row(lookups, as_stored(job_id))
    except UNREADABLE:
        return _row_of_request(seq, event, log_count=None)
    return _row_of_request(seq, event, log_count=0)


async def _requested_in_stream(ctx: ApiContext, job_id: str) -> Mapping[str, Any] | None:
    """The job as its JobRequested tells it, for when the read models cannot be asked. Its
    past is unknown (no count): the stream reads it before following the job live."""
    stored = await _job_request(ctx, job_id)
    return None if stored is None else _row_of_request(*stored, log_count=None)


async def _job_request(ctx: ApiContext, job_id: str) -> tuple[int, events.JobRequested] | None:
    # The id must be the event's own (a subject wildcard in the path finds another job's).
    subject = ctx.names.job_kind_subject(job_id, "requested")
    return await last_readable(ctx.js, ctx.names.stream, subject, events.JobRequested, job_id)


def _row_of_request(
    seq: int, event: events.JobRequested, log_count: int | None
) -> Mapping[str, Any]:
    row: dict[str, Any] = {"first_seq": seq, "requested_by": event.requested_by}
    if log_count is not None:
        row["log_count"] = log_count  # nothing of the job projected yet: no past to speak of
    return row
