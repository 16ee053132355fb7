"""Starting, reading and cancelling jobs."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import nats.errors
import structlog
from litestar import Controller, Request, delete, post
from litestar.datastructures import MultiDict
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from jobrunner.common import batchids, eventstore
from jobrunner.common.jobtypes import ParameterError
from jobrunner.common.lastevent import last_readable
from jobrunner.common.slots import SlotValue, slot_key
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.services.api import jsonbody, readmodels, schemas
from jobrunner.services.api.context import READ_YOUR_WRITES_TIMEOUT, ApiContext
from jobrunner.services.api.dependencies import ctx_of, find_job
from jobrunner.services.api.errors import ApiError, try_again_later
from jobrunner.services.api.external import callback_tokens, callback_url
from jobrunner.services.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from jobrunner.services.api.idempotency import check_key
from jobrunner.services.api.job_control import cancel, raise_busy
from jobrunner.services.api.newest_first import requested_page
from jobrunner.services.api.posted import PostedJob
from jobrunner.services.api.queryparams import Query, invalid
from jobrunner.services.api.reads import get
from jobrunner.services.api.routes.list_parameters import (
    CreatedFrom,
    CreatedTo,
    PageCursor,
    RepeatableValues,
)
from jobrunner.services.api.security import Principal, principal_of
from jobrunner.services.api.security.openapi import error_spec
from jobrunner.services.api.submission import UnknownJobType, check_job, job_fingerprint
from jobrunner.services.api.webhook_requests import checked_webhook

MAX_LIST_LIMIT = 500
# ``POST /api/jobs?wait=...``: answer once the request is in the read models (the default: a
# GET right after finds the job), or as soon as it is stored in JetStream (a client that only
# follows the job's SSE stream, which does not need the read models).
WAIT_CHOICES = ("projected", "stored")
# What ``status`` may name (a list request's filter): the enum's values, listed once.
STATUS_VALUES = [s.value for s in JobStatus]
LIST_PARAMETERS = (
    "limit",
    "cursor",
    "status",
    "job_type",
    "search",
    "batch_id",
    "created_from",
    "created_to",
    "archived",
)

log = structlog.get_logger()
# DELETE /api/jobs/{id} and POST /api/jobs/{id}/cancel are one action, documented alike.
_CANCEL_ROUTE: dict[str, Any] = {
    "status_code": HTTP_202_ACCEPTED,
    "summary": "Cancel a job",
    "responses": {409: error_spec("The job already ended (JOB_FINISHED).")},
}


def decode_create(body: bytes) -> schemas.CreateJob:
    return jsonbody.decode(
        body, schemas.CreateJob, "INVALID_REQUEST", "The request body is not a job request"
    )


class JobController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Start a job",
        opt={"request_body": schemas.CreateJob},  # read by hand below; documented by this
        responses={409: error_spec("The type's lock is busy (SLOT_BUSY).")},
    )
    async def create_job(
        self,
        request: Request[Any, Any, Any],
        wait: Annotated[
            str | None,
            Parameter(
                description="projected (default): answer once GET /api/jobs/{id} finds the "
                "job; stored: once its request is stored in JetStream (its SSE stream can be "
                "opened at once)"
            ),
        ] = None,
    ) -> schemas.JobCreated:
        """Validate the parameters against the job type and publish JobRequested.

        Answers once the request is stored in JetStream and, unless ``wait=stored``, in the read
        models. A job type whose lock is busy and whose busy policy is ``reject`` answers 409
        with the job holding the lock.
        """
        ctx = ctx_of(request)
        wait_for_read_models = wait_choice(wait) == "projected"
        body = decode_create(await request.body())
        try:
            job_type, parameters = check_job(ctx.job_types, body.job_type, body.parameters)
        except UnknownJobType as exc:
            raise ApiError(422, "UNKNOWN_JOB_TYPE", str(exc), known=sorted(ctx.job_types)) from None
        except ParameterError as exc:
            raise ApiError(
                422,
                "INVALID_PARAMETERS",
                "Some parameters are not valid for this job type.",
                fields=[msgspec.to_builtins(e) for e in exc.errors],
            ) from None
        job_id = events.new_job_id()
        event_id = events.new_event_id()
        # A request that may be sent again (Idempotency-Key) gets a derived callback token, so a
        # retry can answer the same one (only its hash is stored).
        key = request.headers.get(IDEMPOTENCY_HEADER)
        tokens = await callback_tokens(request, key is not None)
        if key is not None:
            claim = await ctx.idempotency.claim(
                principal_of(request).name,
                check_key(key),
                job_fingerprint(job_type.name, parameters),
                job_id,
                kind="job",
            )
            job_id = claim.id
            # The id every attempt of this request publishes: JetStream stores it once.
            event_id = batchids.job_requested_event_id(job_id)
            if claim.resumed:
                created = await already_created(ctx, job_id)
                if created is not None:
                    if job_type.external:
                        created.callback_token = tokens(job_id).token
                        created.callback_url = callback_url(request, job_id)
                    return created
        callback = tokens(job_id) if job_type.external else None
        request_event = events.JobRequested(
            job_id=job_id,
            event_id=event_id,
            job_type=job_type.name,
            parameters=parameters,
            lock=job_type.lock,
            requested_by=principal_of(request).name,
            callback_token_hash=callback.token_hash if callback else None,
            webhook=checked_webhook(body.webhook),
        )
        reservation = None
        if job_type.lock and job_type.on_busy == "reject":
            key = slot_key(job_type.lock, request_event.job_id)
            reservation = await ctx.slots.try_acquire(
                key,
                SlotValue(job_id=request_event.job_id, phase="reserved", job_type=job_type.name),
            )
            if reservation is None:
                await raise_busy(ctx, key, job_type.lock, principal_of(request))
        queued = bool(job_type.lock) and job_type.on_busy == "queue"
        if queued and job_type.lock:
            # Queue first, publish second: the queue entry's revision is the job's place, so jobs
            # start in the order their POSTs were answered.
            await ctx.slots.enqueue(job_type.lock, request_event.job_id, job_type.name)
        try:
            seq = await eventstore.publish(ctx.js, ctx.names, request_event)
        except Exception as exc:
            # Decided first: a clean-up below failing too (NATS away) must not turn the answer
            # into a 503 that does not name a job that may be stored.
            maybe_stored = not eventstore.stored_nothing(exc)
            try:
                if reservation is not None:
                    # Released whatever the outcome. Kept for a job that was not stored, it
                    # would answer 409 for the lock until it expired (a minute at least); a job
                    # that was stored finds the slot free and its runner takes it as any runner
                    # would, the lease still one job at a time: what is lost is a 409 to a POST
                    # meanwhile.
                    await ctx.slots.release(reservation)
                if queued and job_type.lock and not maybe_stored:
                    # Taken out only when the request surely was not stored. Its outcome
                    # unknown (an ack lost with a NATS restart, a timeout), the entry stays: a
                    # stored job keeps its place and runs there, with or without the client's
                    # retry; the entry of one that was not stored is dropped by the lock's next
                    # waiter or a sweep once its request has been missing from the stream for
                    # queue_orphan_seconds (runner/queue_orphans.py), all it costs that lock.
                    await ctx.slots.dequeue(job_type.lock, request_event.job_id)
            except Exception as cleanup:
                # A reservation left expires with its TTL; an entry left is dropped as above.
                log.warning("a failed job request's clean-up failed too", error=repr(cleanup))
            if isinstance(exc, nats.errors.Error) and maybe_stored:
                raise _maybe_created(request_event.job_id) from exc
            raise
        if wait_for_read_models:
            await ctx.projection.wait_for(seq, READ_YOUR_WRITES_TIMEOUT)
        else:
            # Its stream is asked for next, most likely before the projector applied it.
            ctx.posted.add(
                job_id,
                PostedJob(seq=seq, requested_by=request_event.requested_by),
                ctx.projection.applied,
            )
        return schemas.JobCreated(
            id=request_event.job_id,
            job_type=job_type.name,
            status=JobStatus.PENDING.value,
            created_at=request_event.occurred_at,
            callback_token=callback.token if callback else None,
            callback_url=callback_url(request, request_event.job_id) if callback else None,
        )

    @get("/", summary="List jobs, newest first, filtered, in pages")
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        limit: Annotated[
            str | None, Parameter(description=f"jobs per page, 1-{MAX_LIST_LIMIT} (default 50)")
        ] = None,
        cursor: PageCursor = None,
        status: RepeatableValues = None,
        job_type: RepeatableValues = None,
        search: Annotated[
            str | None, Parameter(description="text in the type, parameters or result")
        ] = None,
        batch_id: str | None = None,
        created_from: CreatedFrom = None,
        created_to: CreatedTo = None,
        archived: Annotated[
            str | None,
            Parameter(description="false (default: archived jobs left out), true or all"),
        ] = None,
    ) -> schemas.JobPage:
        """Newest first. ``next_cursor`` pages on; pages stay stable while new jobs arrive.

        ``projected_seq`` is the stream sequence the page reflects: open ``/api/jobs/stream``
        with ``?after=<projected_seq>`` to miss no update after it.
        """
        return await job_page(ctx_of(request), request.query_params, principal_of(request))

    @get("/{job_id:str}", summary="One job")
    async def get_job(self, request: Request[Any, Any, Any], job_id: str) -> schemas.Job:
        ctx = ctx_of(request)
        return readmodels.job_from_row(await find_job(ctx, job_id, principal_of(request)))

    @delete("/{job_id:str}", **_CANCEL_ROUTE)
    async def cancel_job(
        self, request: Request[Any, Any, Any], job_id: str
    ) -> schemas.CancelAccepted:
        return await cancel(ctx_of(request), job_id, principal_of(request))

    @post("/{job_id:str}/cancel", **_CANCEL_ROUTE)
    async def cancel_job_post(
        self, request: Request[Any, Any, Any], job_id: str
    ) -> schemas.CancelAccepted:
        return await cancel(ctx_of(request), job_id, principal_of(request))


async def job_page(
    ctx: ApiContext, params: MultiDict[str], principal: Principal
) -> schemas.JobPage:
    """One page of ``GET /api/jobs`` for ``principal``: Litestar's handler above and the fast
    path in front of it (``jobs_fastpath.py``) answer with this one function."""
    query = Query(params, LIST_PARAMETERS)
    since, until = query.time_range("created_from", "created_to")
    filters = readmodels.JobFilter(
        statuses=query.choices("status", STATUS_VALUES),
        job_types=query.names("job_type"),
        search=query.text("search"),
        batch_id=query.name("batch_id"),
        created_from=since,
        created_to=until,
        requested_by=principal.owner,
        archived=query.archived(),
    )
    rows, next_cursor, applied = await requested_page(
        query,
        MAX_LIST_LIMIT,
        lambda limit, after: readmodels.list_jobs(ctx.pool, limit, filters, after),
    )
    return schemas.JobPage(
        items=[readmodels.job_from_row(r) for r in rows],
        next_cursor=next_cursor,
        projected_seq=applied,
    )


def wait_choice(raw: str | None) -> str:
    """The ``wait`` of a job's POST; 400 INVALID_QUERY for anything but a known choice."""
    if raw is None:
        return WAIT_CHOICES[0]
    if raw not in WAIT_CHOICES:
        raise invalid(
            "wait", f"{raw!r} is not a valid wait; choose from {', '.join(WAIT_CHOICES)}."
        )
    return raw


def _maybe_created(job_id: str) -> ApiError:
    """The 503 of a POST whose JobRequested may be stored all the same (its ack lost with a NATS
    restart, or NATS paused past the publish timeout): it names the job, which then runs (in
    its queue place, for a queued lock), so that a client looks it up rather than sending the
    request again without an Idempotency-Key, which would create a second job."""
    return try_again_later(
        "EVENT_STORE_UNAVAILABLE",
        "The event store did not confirm the job in time; it may have been created: look it "
        f"up at /api/jobs/{job_id}, or send the same request again with the same "
        "Idempotency-Key (without one, a request sent again creates another job).",
        retry_after=1,
        job_id=job_id,
    )


async def already_created(ctx: ApiContext, job_id: str) -> schemas.JobCreated | None:
    """The answer to a retried request whose job is stored (None: it is not, publish it)."""
    subject = ctx.names.job_kind_subject(job_id, "requested")
    stored = await last_readable(ctx.js, ctx.names.stream, subject, events.JobRequested, job_id)
    if stored is None:
        return None  # none, or none written by jobrunner: publish ours
    seq, event = stored
    await ctx.projection.wait_for(seq, READ_YOUR_WRITES_TIMEOUT)
    row = await readmodels.get_job_row(ctx.pool, job_id)
    return schemas.JobCreated(
        id=job_id,
        job_type=event.job_type,
        status=row["status"] if row is not None else JobStatus.PENDING.value,
        created_at=event.occurred_at,
    )
