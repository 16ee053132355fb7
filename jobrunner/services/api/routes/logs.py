"""A job's log: JSON pages for people and programs, and the whole log as a text download."""

from __future__ import annotations

import re
from typing import Annotated, Any

from litestar import Request
from litestar.datastructures import MultiDict
from litestar.params import Parameter
from litestar.response import Stream

from jobrunner.common.loglevels import LEVELS, STREAMS
from jobrunner.contracts.events import MAX_COUNT
from jobrunner.services.api import readmodels, schemas
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.dependencies import ctx_of, find_job
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.queryparams import Query
from jobrunner.services.api.reads import get, is_head
from jobrunner.services.api.security import Principal, principal_of

MAX_LOG_PAGE = 5000
LOG_PARAMETERS = ("after", "tail", "limit", "level", "stream", "search")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9_.-]+")


def line_from_row(row: Any) -> schemas.LogLine:
    return schemas.LogLine(
        seq=row["seq"],
        stream=row["stream"],
        level=row["level"],
        timestamp=row["ts"],
        text=row["text"],
    )


@get("/api/jobs/{job_id:str}/logs", tags=["logs"], summary="A job's log lines, in pages")
async def job_logs(
    request: Request[Any, Any, Any],
    job_id: str,
    after: Annotated[str | None, Parameter(description="lines with seq greater than this")] = None,
    tail: Annotated[str | None, Parameter(description="only the last N lines")] = None,
    limit: Annotated[
        str | None, Parameter(description=f"lines per page, 1-{MAX_LOG_PAGE} (default 500)")
    ] = None,
    level: Annotated[list[str] | None, Parameter(description=", ".join(LEVELS))] = None,
    stream: Annotated[list[str] | None, Parameter(description="stdout, stderr")] = None,
    search: Annotated[str | None, Parameter(description="text the line contains")] = None,
) -> schemas.LogPage:
    """Oldest first. ``next_after`` pages on (``?after=<next_after>``); ``tail`` gives the last N.

    Level, stream and search filter both. Lines come from the read model, so a running job's
    latest lines may lag by the projector's delay; live lines are on the job's SSE stream.
    """
    return await log_page(ctx_of(request), request.query_params, principal_of(request), job_id)


async def log_page(
    ctx: ApiContext, params: MultiDict[str], principal: Principal, job_id: str
) -> schemas.LogPage:
    """One page of ``GET /api/jobs/{job_id}/logs`` for ``principal``: Litestar's handler above
    and the fast path in front of it (``jobs_fastpath.py``) answer with this one function."""
    query = Query(params, LOG_PARAMETERS)
    filters = readmodels.LineFilter(
        levels=query.choices("level", LEVELS),
        streams=query.choices("stream", STREAMS),
        search=query.text("search"),
    )
    # A line's seq is a count (Postgres' integer): a larger one is refused, not sent to Postgres.
    after_seq = query.integer("after", None, 0, MAX_COUNT)
    tail_count = query.integer("tail", None, 1, MAX_LOG_PAGE)
    page_size = query.integer("limit", 500, 1, MAX_LOG_PAGE) or 500
    if tail_count is not None and after_seq is not None:
        raise ApiError(
            400, "INVALID_QUERY", "Use either 'after' or 'tail', not both.", field="tail"
        )
    row = await find_job(ctx, job_id, principal)
    next_after: int | None = None
    if tail_count is not None:
        lines = await readmodels.log_lines_tail(ctx.pool, job_id, tail_count, filters)
    else:
        lines = await readmodels.log_lines_after(
            ctx.pool, job_id, after_seq or 0, page_size + 1, filters
        )
        if len(lines) > page_size:
            lines = lines[:page_size]
            next_after = lines[-1]["seq"]
    return schemas.LogPage(
        job_id=job_id,
        status=row["status"],
        log_count=row["log_count"],
        items=[line_from_row(r) for r in lines],
        next_after=next_after,
    )


def download_filename(job_type: str, job_id: str) -> str:
    """``<job type>-<job id>.log`` with anything but letters, digits, ``_.-`` replaced."""
    name = _UNSAFE_FILENAME.sub("_", f"{job_type}-{job_id}")[:150].strip("._-") or "job"
    return f"{name}.log"


@get(
    "/api/jobs/{job_id:str}/logs/download",
    tags=["logs"],
    summary="The whole log as text",
    media_type="text/plain",
    response_description="one line per log line: time (UTC), level, text",
)
async def download_job_log(request: Request[Any, Any, Any], job_id: str) -> Stream:
    """Streamed in chunks straight from Postgres: any size, constant memory."""
    ctx = ctx_of(request)
    Query(request.query_params, ())
    row = await find_job(ctx, job_id, principal_of(request))
    filename = download_filename(row["job_type"], job_id)
    return Stream(
        () if is_head(request) else readmodels.log_text_chunks(ctx.pool, job_id),
        media_type="text/plain; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            # What the read models held as the download began: a client can tell a whole log
            # (a finished job's, as many lines as this) from one read before the projector had
            # applied the job's end (a download right after the stream's `done`: `running`).
            "X-Job-Status": str(row["status"]),
            "X-Log-Lines": str(row["log_count"]),
        },
    )
