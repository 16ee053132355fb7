"""Live streams over Server-Sent Events (protocol in README "SSE protocol")."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Stream

from jobrunner.services.api import sse
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
    ending = await sse.last_status(ctx.js, ctx.names, job_id)
    if ending is not None and ending[1].status.is_terminal and ending[0] < start:
        already_done = sse.status_payload(ending[1])
    return Stream(
        sse.job_stream(ctx.settings.sse_retry_ms, ctx.fanout, job_id, start, resume, already_done),
        media_type="text/event-stream",
        headers=sse.SSE_HEADERS,
    )
