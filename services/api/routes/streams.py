"""Live streams over Server-Sent Events (protocol in README "SSE protocol")."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Stream

from contracts.events import JobStatus
from services.api import sse
from services.api.routes.jobs import ctx_of, find_job
from services.api.security import principal_of

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies must not buffer a live stream
}


@get(
    ["/jobs/stream/{job_id:str}", "/api/jobs/{job_id:str}/stream"],
    tags=["streams"],
    summary="A job's lines, status changes and progress, live",
)
async def job_event_stream(request: Request[Any, Any, Any], job_id: str) -> Stream:
    ctx = ctx_of(request)
    row = await find_job(ctx, job_id, principal_of(request))
    resume = sse.ResumePoint.parse(request.headers.get("last-event-id"))
    start = max(resume.next_seq, row["first_seq"]) if resume else row["first_seq"]
    already_done: dict[str, Any] | None = None
    if JobStatus(row["status"]).is_terminal and start > row["last_seq"]:
        already_done = {"status": row["status"], "exit_code": row["exit_code"]}
    return Stream(
        sse.job_stream(ctx, job_id, start, resume, already_done),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )
