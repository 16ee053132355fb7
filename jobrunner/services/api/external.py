"""External jobs in the API: their callback tokens handed out (``CallbackIssuer``,
``callback_tokens``: new jobs, batches, new attempts), and a worker's report, from its HTTP
request to events in the stream.

The callback token is checked against the hash in the job's JobRequested, read from the stream
(not the read models, which may lag a report sent right after the job was requested). One
answer, 401, for a job that does not exist, one that is not external and a wrong token: the
endpoint tells nobody which jobs exist.

Lines are numbered without gaps across reports, also when two reports of one job arrive at once
(on one API instance or on several): each LineLogged is published on the condition that the
job's last lines message is still the one its numbers were counted from
(``Nats-Expected-Last-Subject-Sequence``); when another report got in first, the numbers are
counted again and the publish repeated. The events of a report with a ``report_id`` take ids
derived from it, so a retried report is stored once (JetStream checks the id before the
condition).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import structlog
from litestar import Request
from nats.js.errors import APIError

from jobrunner.common import callbacktoken, endings, eventstore, metrics
from jobrunner.common.jobtypes import JobType
from jobrunner.common.lastevent import (
    JOB_EVENT_OF_KIND,
    ReadIncomplete,
    last_readable,
    newest_readable,
)
from jobrunner.common.subscription import last_message
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, JobStatus
from jobrunner.services.api import schemas
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.errors import ApiError, try_again_later
from jobrunner.services.api.reports import (
    Report,
    ReportedLine,
    clean_result,
    percent_of,
    split_lines,
)

log = structlog.get_logger()

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
# Reports of one job racing each other: how often one counts its line numbers again.
MAX_NUMBERING_ATTEMPTS = 50
# What a worker whose job still waits for its lock is told to wait before reporting again.
WAITING_RETRY_AFTER_SECONDS = 2


class ReportAccepted(msgspec.Struct):
    job_id: str
    status: str
    # The numbers the report's lines got (null without lines, or for a repeated report).
    first_seq: int | None = None
    last_seq: int | None = None
    # The same report_id was stored before: nothing new was stored.
    duplicate: bool = False


def callback_url(request: Request[Any, Any, Any], job_id: str) -> str:
    """Where an external job's worker reports: absolute, from the address the request came to
    (the Host the access layer allowed)."""
    return str(request.base_url).rstrip("/") + callbacktoken.callback_path(job_id)


class CallbackIssuer:
    """Gives the new jobs of an external type their callback tokens (the hash into their
    JobRequested, the token and address into the answer)."""

    def __init__(self, token: Callable[[str], callbacktoken.CallbackToken], base_url: str) -> None:
        self.token = token
        self.base_url = base_url.rstrip("/")

    @classmethod
    async def for_request(cls, request: Request[Any, Any, Any]) -> CallbackIssuer:
        """Derived tokens (actions are repeated safely: the same attempt, the same token)."""
        return cls(await callback_tokens(request, True), str(request.base_url))

    def issue(
        self, job_types: dict[str, JobType], jobs: list[events.JobRequested]
    ) -> tuple[list[events.JobRequested], list[schemas.ExternalCallback]]:
        out: list[events.JobRequested] = []
        callbacks: list[schemas.ExternalCallback] = []
        for job in jobs:
            job_type = job_types.get(job.job_type)
            if job_type is None or not job_type.external:
                out.append(job)
                continue
            token = self.token(job.job_id)
            out.append(msgspec.structs.replace(job, callback_token_hash=token.token_hash))
            callbacks.append(
                schemas.ExternalCallback(
                    job_id=job.job_id,
                    batch_index=job.batch_index if job.batch_index is not None else 0,
                    callback_token=token.token,
                    callback_url=self.base_url + callbacktoken.callback_path(job.job_id),
                )
            )
        return out, callbacks


async def callback_tokens(
    request: Request[Any, Any, Any], idempotent: bool
) -> Callable[[str], callbacktoken.CallbackToken]:
    """How a batch gives its external jobs their tokens. A submission that may be sent again
    (``Idempotency-Key``) re-publishes the same jobs, whose first stored hash stays: their tokens
    are derived from the installation's secret (the key in the tokens bucket), so every retry
    answers the same ones. Otherwise, or without a token store (``--no-auth``), they are random.
    """
    store = getattr(request.app.state, "access", None)
    store = getattr(store, "store", None)
    if idempotent and store is not None:
        secret: bytes = await store.session_key()
        return lambda job_id: callbacktoken.derive(secret, job_id)
    return lambda _: callbacktoken.mint()


def _invalid_token() -> ApiError:
    return ApiError(
        401,
        "INVALID_CALLBACK_TOKEN",
        "This callback token does not open reports at this address.",
        headers={"WWW-Authenticate": 'Bearer realm="jobrunner-callback"'},
    )


def bearer_token(header: str | None) -> str:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(
            401,
            "CALLBACK_TOKEN_REQUIRED",
            "Send the job's callback token as 'Authorization: Bearer <callback_token>'.",
            headers={"WWW-Authenticate": 'Bearer realm="jobrunner-callback"'},
        )
    return value.strip()


async def authenticate(ctx: ApiContext, job_id: str, token: str) -> events.JobRequested:
    """The job ``token`` opens, or 401 (the same 401 whether or not the job exists)."""
    requested: events.JobRequested | None = None
    if _JOB_ID.match(job_id):  # a job id is part of a subject: no dots or wildcards there
        event = await _last(ctx, job_id, "requested")
        requested = event if isinstance(event, events.JobRequested) else None
    stored_hash = requested.callback_token_hash if requested is not None else None
    if requested is None or not callbacktoken.matches(token, stored_hash):
        raise _invalid_token()
    return requested


async def _last(ctx: ApiContext, job_id: str, kind: str) -> events.Event | None:
    """The job's newest readable event of ``kind`` (one not written by jobrunner is skipped: a
    finished job must not take reports again)."""
    subject = ctx.names.job_kind_subject(job_id, kind)
    found = await last_readable(ctx.js, ctx.names.stream, subject, JOB_EVENT_OF_KIND[kind], job_id)
    return None if found is None else found[1]


def job_finished(status: events.StatusChanged) -> ApiError:
    extra: dict[str, Any] = {"status": status.status.value}
    if status.error is not None:
        extra["error_code"] = status.error.code
    return ApiError(
        409,
        "JOB_FINISHED",
        f"The job already ended with status {status.status.value!r}; stop working on it.",
        **extra,
    )


async def accept(ctx: ApiContext, job_id: str, token: str, report: Report) -> ReportAccepted:
    """Store what the report says, in order: running, lines, progress, the end."""
    request = await authenticate(ctx, job_id, token)
    final = report.final_result
    # Checked before anything is stored: a result refused after the lines would leave half a
    # report behind.
    result = clean_result(final) if final is not None else None
    rid = report.report_id
    subject = ctx.names.job_kind_subject(job_id, "status")
    raw = await last_message(ctx.js, ctx.names.stream, subject)
    # The subject's last message, whoever wrote it (0: empty): ``running`` is stored only if it
    # is still the last (``_store_running``).
    status_last = 0 if raw is None or raw.seq is None else raw.seq
    found = None
    if raw is not None and raw.seq is not None:
        newest = raw.seq, raw.data or b""
        found = await newest_readable(
            ctx.js, ctx.names.stream, subject, newest, events.StatusChanged, job_id
        )
    status = None if found is None else found[1]
    # Where the status subject ends, as far as this report knows: its ending is stored
    # conditionally on it (see endings.store); junk after the status read only costs a read.
    status_seq = 0 if found is None else found[0]
    if status is not None and status.status.is_terminal:
        if rid is not None and status.report_id == rid:
            return ReportAccepted(job_id=job_id, status=status.status.value, duplicate=True)
        raise job_finished(status)
    if await _last(ctx, job_id, "cancel") is not None:
        raise ApiError(
            409,
            "JOB_FINISHED",
            "The job was cancelled; stop working on it.",
            status=JobStatus.CANCELLED.value,
        )
    if status is None:
        record = await ctx.slots.holder(job_id)
        if record is None:
            raise ApiError(
                409,
                "JOB_WAITING",
                "The job is waiting for a runner to take its lock; report again shortly.",
                headers={"Retry-After": str(WAITING_RETRY_AFTER_SECONDS)},
            )
        started = await _store_running(ctx, job_id, record.runner_id, status_last)
        if isinstance(started, events.StatusChanged):
            if rid is not None and started.report_id == rid:
                return ReportAccepted(job_id=job_id, status=started.status.value, duplicate=True)
            raise job_finished(started)
        status_seq, duplicate = started
        if not duplicate:  # two first reports at once: one start
            metrics.job_started(request.job_type)
    answer = ReportAccepted(job_id=job_id, status=JobStatus.RUNNING.value)
    lines = split_lines(report.lines)
    if lines:
        answer = await _publish_lines(ctx, job_id, lines, _event_id(job_id, rid, "lines"))
    progress = report.progress_report
    if progress is not None:
        await eventstore.publish(
            ctx.js,
            ctx.names,
            events.ProgressReported(
                job_id=job_id,
                event_id=_event_id(job_id, rid, "progress"),
                current=progress.current,
                total=progress.total,
                percent=percent_of(progress),
                phase=progress.phase,
                message=progress.message,
            ),
        )
    if result is not None or report.error is not None:
        answer = await _end(ctx, job_id, report, result, answer, request.job_type, status_seq)
    # A sign of life for the runner holding the job, even for a report with nothing to store.
    await ctx.nc.publish(ctx.names.external_reported_subject(job_id), b"")
    return answer


async def _store_running(
    ctx: ApiContext, job_id: str, runner_id: str | None, status_last: int
) -> tuple[int, bool] | events.StatusChanged:
    """The job's ``running`` (``<job id>-running``) stored, conditionally on its status subject
    ending at ``status_last`` as the report read it: its stream sequence and whether it was
    stored before (another first report's); else the ending stored since (a sweep's
    RUNNER_LOST), which the report is answered with. A ``running`` after an ending would have
    a later final report, past the duplicate window, store a second ending.

    Refused, the subject is read forwards for the job's first status, as the runner does
    (``endings.first_status``): ``running`` found → stored by another report; an ending →
    answered; none, the read complete → tried again on the last message it read; a read cut
    short → read again. After ``endings.MOST_READS`` reads, 503 (``ReadIncomplete``): the worker
    reports again, as for any read the bounds cut short."""
    running = events.StatusChanged(
        job_id=job_id, event_id=f"{job_id}-running", status=JobStatus.RUNNING, runner_id=runner_id
    )
    after: int | None = status_last
    for _ in range(endings.MOST_READS):
        if after is not None:
            acked = eventstore.publish_acked(ctx.js, ctx.names, running, expected_last=after)
            ack = await eventstore.unless_wrong_last(acked)
            if ack is not None:
                return ack.seq, bool(ack.duplicate)
        found, complete, last = await endings.first_status(ctx.js, ctx.names, job_id)
        if found is not None:
            seq, status = found
            return status if status.status.is_terminal else (seq, True)
        after = last if complete else None
    subject = ctx.names.job_kind_subject(job_id, "status")
    raise ReadIncomplete(f"running could not be stored on {subject}")


def _event_id(job_id: str, report_id: str | None, part: str) -> str:
    if report_id is None:
        return events.new_event_id()
    return f"{job_id}-report-{report_id}-{part}"


async def _publish_lines(
    ctx: ApiContext, job_id: str, lines: list[ReportedLine], event_id: str
) -> ReportAccepted:
    subject = ctx.names.job_kind_subject(job_id, "lines")
    for _ in range(MAX_NUMBERING_ATTEMPTS):
        last = await last_message(ctx.js, ctx.names.stream, subject)
        after = 0
        if last is not None and last.seq is not None:
            # Numbered on from the newest lines jobrunner wrote; the expected sequence below is
            # the subject's newest message's, whoever wrote it.
            newest = last.seq, last.data or b""
            previous = await newest_readable(
                ctx.js, ctx.names.stream, subject, newest, events.LineLogged, job_id
            )
            if previous is not None and previous[1].event_id == event_id:
                # This report's lines are the job's newest: a retry that JetStream's duplicate
                # window no longer catches (NATS away longer than it after storing them).
                return ReportAccepted(job_id=job_id, status=JobStatus.RUNNING.value, duplicate=True)
            if previous is not None and previous[1].lines:
                after = previous[1].lines[-1].seq
        at = events.utcnow()
        event = events.LineLogged(
            job_id=job_id,
            event_id=event_id,
            occurred_at=at,
            lines=[
                events.LogLine(after + i, line.stream, line.level, at, line.text)
                for i, line in enumerate(lines, 1)
            ],
        )
        try:
            ack = await eventstore.publish_acked(
                ctx.js, ctx.names, event, last.seq if last and last.seq else 0
            )
        except nats.errors.MaxPayloadError:
            # Refused before it was sent (the headers count too): the server would close the
            # connection for it.
            raise ApiError(
                413,
                "REPORT_TOO_LARGE",
                "These lines do not fit one message of the NATS server; send fewer per report.",
            ) from None
        except APIError as exc:
            if exc.err_code == eventstore.WRONG_LAST_SEQUENCE:
                continue  # another report's lines got in first: count again
            raise
        if ack.duplicate:
            return ReportAccepted(job_id=job_id, status=JobStatus.RUNNING.value, duplicate=True)
        return ReportAccepted(
            job_id=job_id,
            status=JobStatus.RUNNING.value,
            first_seq=after + 1,
            last_seq=after + len(lines),
        )
    raise try_again_later(
        "REPORT_CONFLICT",
        "Too many reports of this job arrive at once; send this one again.",
        retry_after=1,
    )


async def _end(
    ctx: ApiContext,
    job_id: str,
    report: Report,
    result: dict[str, Any] | None,
    answer: ReportAccepted,
    job_type: str,
    status_seq: int,
) -> ReportAccepted:
    if report.error is not None:
        status = JobStatus.FAILED
        error: ErrorInfo | None = ErrorInfo(
            code=report.error.code,
            message=report.error.message or f"The external worker reported {report.error.code}.",
        )
        result = None
    else:
        status, error = JobStatus.COMPLETED, None
    ending = events.StatusChanged(
        job_id=job_id,
        event_id=events.terminal_event_id(job_id),
        status=status,
        error=error,
        result=result,
        report_id=report.report_id,
    )
    stored, first, _ = await endings.store(ctx.js, ctx.names, ending, after=status_seq)
    if stored:
        metrics.job_ended(job_type, status.value)
        return msgspec.structs.replace(answer, status=status.value)
    if first is None:
        # No ending stored and none found (foreign messages on its terminal ids): try again.
        raise try_again_later(
            "REPORT_CONFLICT",
            "The job's ending could not be stored; send this report again.",
            retry_after=1,
        )
    # Someone ended the job first (a cancel, a timeout), or this is a retried final report.
    if report.report_id is None or first.report_id != report.report_id:
        raise job_finished(first)
    return msgspec.structs.replace(answer, status=first.status.value, duplicate=True)
