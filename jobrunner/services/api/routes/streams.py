"""Live streams over Server-Sent Events (protocol in README "SSE protocol")."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, get
from litestar.response import Stream

from jobrunner.contracts import events
from jobrunner.services.api import sse
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.dependencies import ctx_of, find_job
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.security import principal_of


@get(
    ["/jobs/stream/{job_id:str}", "/api/jobs/{job_id:str}/stream"],
    tags=["streams"],
    summary="A job's lines, status changes and progress, live",
    media_type="text/event-stream",
)
async def job_event_stream(request: Request[Any, Any, Any], job_id: str) -> Stream:
    ctx = ctx_of(request)
    # The job's last status is read from JetStream while its row is looked up: one wait, not two.
    ending_read = asyncio.ensure_future(sse.last_status(ctx.js, ctx.names, job_id))
    try:
        return await _stream(request, ctx, job_id, ending_read)
    finally:
        if not ending_read.done():
            ending_read.cancel()  # the request was refused before it was needed
        elif not ending_read.cancelled():
            ending_read.exception()  # read, so that a refused request leaves no error unseen


async def _stream(
    request: Request[Any, Any, Any],
    ctx: ApiContext,
    job_id: str,
    ending_read: asyncio.Future[tuple[int, events.StatusChanged] | None],
) -> Stream:
    row = await find_job(ctx, job_id, principal_of(request))
    resume = sse.ResumePoint.parse(request.headers.get("last-event-id"))
    if resume is not None:
        # No event has that id yet: the client did not get it from us. Refused, so that no
        # client ever waits for events that may never be its job's.
        last = (await ctx.js.stream_info(ctx.names.stream)).state.last_seq
        if resume.stream_seq > last:
            raise ApiError(
                400,
                "LAST_EVENT_ID_AHEAD",
                f"Last-Event-ID {resume.stream_seq} is beyond the last stored event ({last}); "
                "reconnect without it to read the stream from the start.",
                last_event_id=resume.stream_seq,
                stream_last_seq=last,
            )
    start = max(resume.next_seq, row["first_seq"]) if resume else row["first_seq"]
    # Whether the stream already ended before the resume point is asked of JetStream itself:
    # the read model may not have caught up with the end a client has just seen.
    already_done: dict[str, Any] | None = None
    ending = await ending_read
    if ending is not None and ending[1].status.is_terminal and ending[0] < start:
        already_done = sse.status_payload(ending[1])
    # A job with a short past (a job just started, the usual first viewer) has its feed started
    # at the client's start: no separate history read before the first line.
    settings = ctx.settings
    feed_from = (
        start
        if sse.short_past(
            row["log_count"], settings.max_line_bytes, settings.sse_client_buffer_bytes
        )
        else None
    )
    return Stream(
        sse.job_stream(
            ctx.settings.sse_retry_ms, ctx.fanout, job_id, start, resume, already_done, feed_from
        ),
        media_type="text/event-stream",
        headers=sse.SSE_HEADERS,
    )
