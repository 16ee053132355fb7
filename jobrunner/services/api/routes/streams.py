"""Live streams over Server-Sent Events (protocol in README "SSE protocol")."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Stream

from jobrunner.services.api import sse
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.fanout import Fanout
from jobrunner.services.api.routes.jobs import ctx_of, find_job
from jobrunner.services.api.security import principal_of

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies must not buffer a live stream
}


def fanout_of(request: Request[Any, Any, Any], ctx: ApiContext) -> Fanout:
    """The API process's job feeds, made on first use (one JetStream subscription per job)."""
    state = request.app.state
    fanout: Fanout | None = state.get("sse_fanout")
    if fanout is None or fanout.js is not ctx.js:
        fanout = Fanout(ctx.js, ctx.names, sse.frames_for, ctx.settings.sse_keepalive_seconds)
        state["sse_fanout"] = fanout
    return fanout


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
    start = max(resume.next_seq, row["first_seq"]) if resume else row["first_seq"]
    # Whether the stream already ended before the resume point is asked of JetStream itself:
    # the read model may not have caught up with the end a client has just seen.
    already_done: dict[str, Any] | None = None
    ending = await sse.last_status(ctx, job_id)
    if ending is not None and ending[1].status.is_terminal and ending[0] < start:
        already_done = sse.status_payload(ending[1])
    return Stream(
        sse.job_stream(ctx, fanout_of(request, ctx), job_id, start, resume, already_done),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )
