"""``GET /api/jobs/stream``: every job's changes as ``job_update`` SSE events, every batch's
counters as ``batch_update``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import Parameter
from litestar.response import Stream

from jobrunner.common.database import READ_SCHEMA
from jobrunner.services.api import sse
from jobrunner.services.api.dependencies import ctx_of
from jobrunner.services.api.job_updates import update_stream
from jobrunner.services.api.queryparams import Query
from jobrunner.services.api.security import principal_of
from jobrunner.services.api.security.scope import OwnerFilter
from jobrunner.services.api.streamlookups import UNREADABLE, stream_lookups


@get(
    "/api/jobs/stream",
    tags=["streams"],
    summary="Every job's and batch's changes, live (job_update, batch_update)",
    media_type="text/event-stream",
)
async def job_updates(
    request: Request[Any, Any, Any],
    after: Annotated[
        str | None,
        Parameter(description="stream sequence to start after (projected_seq of GET /api/jobs)"),
    ] = None,
) -> Stream:
    """Starts after ``Last-Event-ID``, else after ``?after=``, else after what the read models
    already show (so a list read just before connecting plus this stream miss nothing)."""
    ctx = ctx_of(request)
    after_seq = Query(request.query_params, ("after",)).integer(
        "after", None, 0, sse.MAX_STREAM_SEQ
    )
    resume = sse.ResumePoint.parse(request.headers.get("last-event-id"))
    lookups = stream_lookups(ctx)
    # A start the stream has not reached would hold the stream silent until it did.
    if resume is not None:
        await sse.refuse_an_id_ahead(ctx.js, ctx.names, resume.stream_seq, "last-event-id")
        start = resume.next_seq
    elif after_seq is not None:
        await sse.refuse_an_id_ahead(ctx.js, ctx.names, after_seq, "after")
        start = after_seq + 1
    else:
        # One of the stream's own reads (its bound, the version check; tables of another
        # version answer the gate's 503). Not made (the API's streams pause after a failed
        # read) or failed, the projector's last notice tells as much: the stream starts after
        # it. Only with no notice since the API started is it 503 (READ_MODELS_TIMEOUT frozen,
        # READ_MODELS_UNAVAILABLE stopped or paused).
        try:
            applied = await lookups.fetchval(f"SELECT last_seq FROM {READ_SCHEMA}.checkpoint")
        except UNREADABLE:
            if not ctx.projection.applied:
                raise
            applied = ctx.projection.applied
        start = int(applied or 0) + 1
    scope = OwnerFilter(lookups, principal_of(request).owner)
    # A token that sees every job needs no check: an await per event of a catch-up saved.
    visible = scope.visible if scope.owner is not None else None
    return Stream(
        update_stream(ctx, start, visible, owner=scope.owner, lookups=lookups),
        media_type="text/event-stream",
        headers=sse.SSE_HEADERS,
    )
