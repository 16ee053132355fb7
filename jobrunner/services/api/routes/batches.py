"""Reading batches: the list with its filters, and one batch with its jobs in batch order."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request
from litestar.params import Parameter

from jobrunner.services.api import batch_readmodels, readmodels, schemas
from jobrunner.services.api.batch_readmodels import BATCH_STATUSES
from jobrunner.services.api.dependencies import ctx_of, find_batch
from jobrunner.services.api.newest_first import requested_page
from jobrunner.services.api.queryparams import Query, keyset_page
from jobrunner.services.api.reads import get
from jobrunner.services.api.routes.list_parameters import (
    CreatedFrom,
    CreatedTo,
    PageCursor,
    RepeatableValues,
)
from jobrunner.services.api.security import principal_of

MAX_LIST_LIMIT = 500
LIST_PARAMETERS = (
    "limit",
    "cursor",
    "status",
    "archived",
    "job_type",
    "search",
    "created_from",
    "created_to",
)
DETAIL_PARAMETERS = ("jobs_limit", "jobs_cursor", "attempts")
MAX_JOBS_LIMIT = 500


class BatchController(Controller):
    path = "/api/batches"
    tags = ["batches"]

    @get("/", summary="List batches, newest first, filtered, in pages")
    async def list_batches(
        self,
        request: Request[Any, Any, Any],
        limit: Annotated[
            str | None,
            Parameter(description=f"batches per page, 1-{MAX_LIST_LIMIT} (default 50)"),
        ] = None,
        cursor: PageCursor = None,
        status: RepeatableValues = None,
        archived: Annotated[
            str | None,
            Parameter(description="false (default: archived batches left out), true or all"),
        ] = None,
        job_type: Annotated[
            list[str] | None,
            Parameter(description="batches holding any of these types; repeatable"),
        ] = None,
        search: Annotated[str | None, Parameter(description="text in the name or id")] = None,
        created_from: CreatedFrom = None,
        created_to: CreatedTo = None,
    ) -> schemas.BatchPage:
        """Newest first. ``next_cursor`` pages on; pages stay stable while new batches arrive.

        ``projected_seq`` is the stream sequence the page reflects: open ``/api/jobs/stream``
        with ``?after=<projected_seq>`` to miss no ``batch_update`` after it.
        """
        ctx = ctx_of(request)
        query = Query(request.query_params, LIST_PARAMETERS)
        since, until = query.time_range("created_from", "created_to")
        filters = batch_readmodels.BatchFilter(
            statuses=query.choices("status", BATCH_STATUSES),
            archived=query.archived(),
            job_types=query.names("job_type"),
            search=query.text("search"),
            created_from=since,
            created_to=until,
            requested_by=principal_of(request).owner,
        )
        rows, next_cursor, applied = await requested_page(
            query,
            MAX_LIST_LIMIT,
            lambda limit, after: batch_readmodels.list_batches(ctx.pool, limit, filters, after),
        )
        return schemas.BatchPage(
            items=[batch_readmodels.batch_from_row(r) for r in rows],
            next_cursor=next_cursor,
            projected_seq=applied,
        )

    @get("/{batch_id:str}", summary="One batch with a page of its jobs")
    async def get_batch(
        self,
        request: Request[Any, Any, Any],
        batch_id: str,
        jobs_limit: Annotated[
            str | None,
            Parameter(description=f"jobs per page, 1-{MAX_JOBS_LIMIT} (default 100)"),
        ] = None,
        jobs_cursor: Annotated[
            str | None, Parameter(description="jobs.next_cursor of the previous page")
        ] = None,
        attempts: Annotated[
            str | None,
            Parameter(description="latest (default: each job's latest attempt) or all"),
        ] = None,
    ) -> schemas.BatchDetail:
        """The batch's aggregates and its jobs in batch order (``batch_index``), each job's
        latest attempt unless ``attempts=all``. 404 for a batch the caller may not see."""
        ctx = ctx_of(request)
        principal = principal_of(request)
        query = Query(request.query_params, DETAIL_PARAMETERS)
        page_size = query.integer("jobs_limit", 100, 1, MAX_JOBS_LIMIT) or 100
        after = query.cursor("jobs_cursor", batch_readmodels.BatchJobCursor)
        which = query.choices("attempts", ("latest", "all"))
        row = await find_batch(ctx, batch_id, principal)
        rows = await batch_readmodels.batch_jobs(
            ctx.pool,
            batch_id,
            page_size + 1,
            all_attempts="all" in which,
            after=after,
            requested_by=principal.owner,
        )
        rows, next_cursor = keyset_page(rows, page_size, batch_readmodels.job_cursor)
        batch = batch_readmodels.batch_from_row(row)
        return schemas.BatchDetail(
            **{f: getattr(batch, f) for f in batch.__struct_fields__},
            jobs=schemas.BatchJobs(
                items=[readmodels.job_from_row(r) for r in rows],
                next_cursor=next_cursor,
            ),
        )
