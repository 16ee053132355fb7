"""Carrying out actions on batches and jobs: check the caller and the options, read the current
state, plan (``actions``, pure), and publish.

Every decision is taken on read models that include every event the stream held when the
request arrived (``attempt_rows.catch_up``), so an action sent again right after another (or
after an API that died half-way through one) sees what the first one published.

Publishing order: the batch event; cancels (pending jobs before running ones); the queue places
of the new attempts' locks, in batch order; the new attempts. Queue first, publish second, as for
``POST /api/jobs``: a queue entry's revision is the job's place, so a batch's locked jobs take
their lock in batch order.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import msgspec
import nats.errors

from jobrunner.common import bidicontrols, endings, eventstore
from jobrunner.common.jobtypes import JobType, ParameterError, parameters_it_takes
from jobrunner.common.slots import SlotValue, slot_key
from jobrunner.contracts import events
from jobrunner.contracts.events import TERMINAL_STATUSES, JobStatus
from jobrunner.services.api import attempt_rows, jsonbody
from jobrunner.services.api.action_schemas import (
    MAX_JOB_ID_CHARS,
    MAX_JOB_IDS,
    MAX_REASON_CHARS,
    ActionOptions,
    BatchActionAccepted,
    JobArchiveChanged,
    JobRestarted,
)
from jobrunner.services.api.actions import (
    Action,
    Attempt,
    Plan,
    next_attempt,
    plan_fail,
    plan_restart,
    unknown_jobs,
)
from jobrunner.services.api.context import READ_YOUR_WRITES_TIMEOUT, ApiContext
from jobrunner.services.api.dependencies import find_batch
from jobrunner.services.api.errors import ApiError, job_not_found, try_again_later
from jobrunner.services.api.external import CallbackIssuer
from jobrunner.services.api.job_control import give_back_places, raise_busy
from jobrunner.services.api.schemas import ExternalCallback
from jobrunner.services.api.security import Principal
from jobrunner.services.api.submission import UnknownJobType, check_job

# The most unknown or refused jobs an error lists (``unknown_count``, ``refused_count`` say how
# many there were).
MAX_LISTED_UNKNOWN = 100
# Options each action takes; any other given option is refused, not silently ignored.
TAKES_JOB_IDS = frozenset({Action.RESTART, Action.PENDING})
TAKES_REASON = frozenset({Action.RESTART, Action.PENDING, Action.FAIL})


@asynccontextmanager
async def event_store_answers() -> AsyncIterator[None]:
    """NATS that does not confirm in time answers 503: part of the action may have taken effect,
    and sending the same action again finishes it (see the module docstring)."""
    try:
        yield
    except nats.errors.MaxPayloadError:
        raise  # never passes: the API's handler answers 413 MESSAGE_TOO_LARGE
    except (nats.errors.Error, TimeoutError) as exc:
        raise try_again_later(
            "EVENT_STORE_UNAVAILABLE",
            f"The event store did not confirm the action ({type(exc).__name__}); part of it may "
            "have taken effect: send the same action again to finish it.",
            retry_after=1,
        ) from None


def decode_options(body: bytes) -> ActionOptions:
    """The optional JSON body of an action: empty means no options."""
    if not jsonbody.without_utf8_bom(body).strip():
        return ActionOptions()
    return jsonbody.decode_as(body, ActionOptions, options_refused)


# What each option must be: msgspec's own words name the pattern ("Expected `str` matching
# regex '^[^\\x00-...'"), which tells a person nothing.
_OPTION_RULES = {
    "reason": (
        f"a reason is 1 to {MAX_REASON_CHARS} characters without control characters or "
        f"{bidicontrols.NAMED}"
    ),
    "job_ids": (
        f"job_ids is a list of at most {MAX_JOB_IDS} job ids, each 1 to {MAX_JOB_ID_CHARS} "
        f"characters without control characters or {bidicontrols.NAMED}"
    ),
}
# The option, and which of its items when msgspec names one (`$.job_ids[3]`).
_AT_OPTION = re.compile(r"at `\$\.(\w+)((?:\[\d+\])?)")
_UNKNOWN_OPTION = re.compile(r"unknown field `(.*)`")
# An unknown option's name is the client's text, of any length: echo its start only.
MAX_ECHOED_NAME_CHARS = 100


def _echoed(name: str) -> str:
    if len(name) <= MAX_ECHOED_NAME_CHARS:
        return name
    return name[:MAX_ECHOED_NAME_CHARS] + "\u2026"


def options_refused(detail: str) -> ApiError:
    """422 INVALID_OPTIONS for a body msgspec refused (``detail``), naming the option in
    ``field`` with a sentence; a body that is no object keeps msgspec's words."""
    if unknown := _UNKNOWN_OPTION.search(detail):
        name = _echoed(unknown.group(1))
        return ApiError(
            422,
            "INVALID_OPTIONS",
            f"No action takes the option {name!r}; the options are reason and job_ids.",
            field=name,
        )
    at = _AT_OPTION.search(detail)
    if at is not None and at.group(1) in _OPTION_RULES:
        name, item = at.groups()
        return ApiError(
            422,
            "INVALID_OPTIONS",
            f"The action's {name}{item} is not valid: {_OPTION_RULES[name]}.",
            field=name + item,
        )
    return ApiError(
        422, "INVALID_OPTIONS", f"The request body is not valid action options: {detail}."
    )


def check_options(action: Action, options: ActionOptions, *, on_job: bool = False) -> None:
    """Refuse an option this action does not take (naming it)."""
    if options.job_ids is not None and (on_job or action not in TAKES_JOB_IDS):
        raise ApiError(
            422,
            "INVALID_OPTIONS",
            f"{action.value!r} does not take job_ids (only a batch's restart and pending do).",
            field="job_ids",
        )
    if options.reason is not None and (on_job or action not in TAKES_REASON):
        raise ApiError(
            422,
            "INVALID_OPTIONS",
            f"{action.value!r} does not take a reason (a batch's restart, pending and fail do).",
            field="reason",
        )


async def act_on_batch(
    ctx: ApiContext,
    batch_id: str,
    action: Action,
    options: ActionOptions,
    principal: Principal,
    callbacks: CallbackIssuer | None = None,
) -> BatchActionAccepted:
    check_options(action, options)
    await attempt_rows.catch_up(ctx)
    batch = await find_batch(ctx, batch_id, principal)
    actor = principal.name
    if action in (Action.ARCHIVE, Action.UNARCHIVE):
        event = events.BatchArchived(
            batch_id=batch_id, archived=action == Action.ARCHIVE, requested_by=actor
        )
        seq = await eventstore.publish(ctx.js, ctx.names, event)
        await ctx.projection.wait_for(seq, READ_YOUR_WRITES_TIMEOUT)
        return BatchActionAccepted(batch_id=batch_id, action=action.value, jobs=[], attempts=[])
    latest = await attempt_rows.latest_attempts(ctx.pool, batch_id)
    if action == Action.FAIL:
        live = any(not job.ended for job in latest)
        if batch["status"] in TERMINAL_STATUSES and not live:
            raise ApiError(
                409,
                "BATCH_FINISHED",
                f"The batch already ended with status {batch['status']!r}.",
                status=batch["status"],
            )
        plan = plan_fail(
            batch_id,
            latest,
            actor,
            options.reason or f"Failed on request of {actor}.",
            # Only a BatchFailed makes a batch with jobs still to end "failed": this is a fail
            # sent again (say after the API died half-way through the first).
            already_failed=batch["status"] == JobStatus.FAILED and live,
        )
    else:
        selected = None
        if options.job_ids is not None:
            roots = await attempt_rows.roots_of(ctx.pool, batch_id, options.job_ids)
            unknown = unknown_jobs(options.job_ids, roots)
            if unknown:
                raise ApiError(
                    422,
                    "UNKNOWN_JOBS",
                    f"{len(unknown)} of the job_ids are not jobs of batch {batch_id!r}.",
                    field="job_ids",
                    unknown=unknown[:MAX_LISTED_UNKNOWN],
                    unknown_count=len(unknown),
                )
            wanted = set(roots.values())
            selected = frozenset(job.id for job in latest if job.root in wanted)
        plan = plan_restart(
            batch_id,
            latest,
            actor,
            unfinished_only=action == Action.PENDING,
            reason=options.reason,
            selected=selected,
        )
    _batch_on_types_as_they_are(ctx, batch_id, plan)
    issued: list[ExternalCallback] = []
    if callbacks is not None:
        # New attempts of external jobs need callback tokens of their own.
        plan.attempts, issued = callbacks.issue(ctx.job_types, plan.attempts)
    await carry_out(ctx, plan, queue_all=True)
    return BatchActionAccepted(
        batch_id=batch_id,
        action=action.value,
        jobs=plan.touched,
        attempts=[attempt.job_id for attempt in plan.attempts],
        callbacks=issued,
    )


async def carry_out(ctx: ApiContext, plan: Plan, *, queue_all: bool) -> int:
    """Publish a plan in order; returns the last stream sequence. ``queue_all``: every locked
    new attempt queues for its lock (a batch's jobs do, whatever the type's busy policy)."""
    seq = 0
    ended: dict[str, endings.Stored] = {}
    if plan.first:
        # One pipeline; only a pending job's end that meets another stored first (or a message
        # jobrunner did not write) reads its status subject (see endings.publish_with_endings).
        seq, ended = await endings.publish_with_endings(ctx.js, ctx.names, plan.first)
    await give_back_places(ctx, plan.cancelled_pending, ended)
    if plan.attempts:
        by_lock: dict[str, list[tuple[str, str]]] = {}
        for attempt in plan.attempts:
            if attempt.lock and (queue_all or _queues(ctx, attempt)):
                by_lock.setdefault(attempt.lock, []).append((attempt.job_id, attempt.job_type))
        for lock, queued in by_lock.items():
            await ctx.slots.enqueue_many(lock, queued)  # pipelined, places in plan order
        seq = await eventstore.publish_many(ctx.js, ctx.names, plan.attempts)
    if seq:
        await ctx.projection.wait_for(seq, READ_YOUR_WRITES_TIMEOUT)
    return seq


def _queues(ctx: ApiContext, attempt: events.JobRequested) -> bool:
    job_type = ctx.job_types.get(attempt.job_type)
    return attempt.batch_id is not None or job_type is None or job_type.on_busy == "queue"


async def _visible_attempt(ctx: ApiContext, job_id: str, principal: Principal) -> Attempt:
    job = await attempt_rows.attempt_by_id(ctx.pool, job_id)
    if job is None or not principal.can_see_owner(job.requested_by):
        raise job_not_found(job_id)
    return job


async def restart_job(
    ctx: ApiContext,
    job_id: str,
    options: ActionOptions,
    principal: Principal,
    callbacks: CallbackIssuer | None = None,
) -> JobRestarted:
    """A new attempt of an ended job (of its latest attempt, whichever attempt was named)."""
    check_options(Action.RESTART, options, on_job=True)
    await attempt_rows.catch_up(ctx)
    named = await _visible_attempt(ctx, job_id, principal)
    latest = await attempt_rows.latest_attempt_of(ctx.pool, named.root) or named
    if not latest.ended:
        _raise_active(latest)
    try:
        attempt, job_type = on_type_as_it_is(ctx, next_attempt(latest, principal.name))
    except CannotRunAgain as exc:
        raise exc.for_job() from None
    issued: list[ExternalCallback] = []
    if callbacks is not None:
        [attempt], issued = callbacks.issue(ctx.job_types, [attempt])
    # The one failure that surely stores nothing, checked before the attempt is queued: then
    # the publish's failures below all leave its outcome unknown (see the except).
    eventstore.check_fits(ctx.js, attempt)
    reservation = None
    if attempt.lock and attempt.batch_id is None and job_type.on_busy == "reject":
        # As POST /api/jobs: a busy lock answers 409 rather than queueing.
        key = slot_key(attempt.lock, attempt.job_id)
        reservation = await ctx.slots.try_acquire(
            key, SlotValue(job_id=attempt.job_id, phase="reserved", job_type=job_type.name)
        )
        if reservation is None:
            await raise_busy(ctx, key, attempt.lock, principal)
    try:
        await carry_out(ctx, Plan(attempts=[attempt]), queue_all=False)
    except Exception:
        if reservation is not None:
            await ctx.slots.release(reservation)  # as POST /api/jobs: whatever the outcome
        # A queued attempt's entry is kept whatever failed, unlike POST /api/jobs, which takes
        # it out when its one publish surely stored nothing: ``publish_many`` publishes an
        # attempt whose ack did not come again, so the error it raises may be that second
        # send's (no stream answering during a leader election, the connection closed) after
        # the first copy was stored; no error of it proves the attempt absent. A stored
        # attempt runs in its place; the entry of one never stored is dropped by the lock's
        # next waiter or a sweep once its request has been missing for queue_orphan_seconds
        # (runner/queue_orphans.py). The same holds
        # when the queue write itself timed out, the attempt not published.
        raise
    return JobRestarted(
        id=attempt.job_id,
        job_type=attempt.job_type,
        status=JobStatus.PENDING.value,
        created_at=attempt.occurred_at,
        attempt=attempt.attempt,
        attempt_of=latest.root,
        restarted=latest.id,
        batch_id=attempt.batch_id,
        callback_token=issued[0].callback_token if issued else None,
        callback_url=issued[0].callback_url if issued else None,
    )


class CannotRunAgain(Exception):
    """A job that cannot run again on its job type as this API knows it now."""

    def __init__(self, attempt: events.JobRequested, code: str, message: str, **detail: Any):
        super().__init__(message)
        self.job_id = attempt.attempt_of or attempt.job_id  # the first attempt's: names the job
        self.job_type = attempt.job_type
        self.code = code
        self.message = message
        self.detail = detail

    def for_job(self) -> ApiError:
        return ApiError(
            422, self.code, f"{self.message}; start a new job.", job_id=self.job_id, **self.detail
        )

    def in_batch(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "job_type": self.job_type, "code": self.code, **self.detail}


def on_type_as_it_is(
    ctx: ApiContext, attempt: events.JobRequested, *, keep_lock: bool = False
) -> tuple[events.JobRequested, JobType]:
    """A new attempt on its job type as this API knows it now, not as it was when the job was
    first requested (the types file may have changed since): its parameters checked again as a
    new job's are (a choice since removed, a parameter since required, must not reach the
    tool), defaults filled in, parameters the type no longer has dropped (the tool could never
    be given them: argv is built from the type's own parameters); and the type's lock (an
    operator who moved the type to another lock wants its jobs to share that one), unless
    ``keep_lock``: an attempt replacing one still running keeps that one's lock (or its job
    slot), so that it waits for it to end. Raises CannotRunAgain."""
    known = ctx.job_types.get(attempt.job_type)
    still_taken = (
        attempt.parameters if known is None else parameters_it_takes(known, attempt.parameters)
    )
    try:
        job_type, parameters = check_job(ctx.job_types, attempt.job_type, still_taken)
    except UnknownJobType:
        raise CannotRunAgain(
            attempt,
            "UNKNOWN_JOB_TYPE",
            f"There is no job type {attempt.job_type!r} any more, so job "
            f"{attempt.attempt_of!r} cannot run again",
            known=sorted(ctx.job_types),
        ) from None
    except ParameterError as exc:
        raise CannotRunAgain(
            attempt,
            "INVALID_PARAMETERS",
            f"Job {attempt.attempt_of!r} cannot run again: its parameters are not valid for job "
            f"type {attempt.job_type!r} as it is now (the type changed since)",
            fields=[msgspec.to_builtins(e) for e in exc.errors],
        ) from None
    lock = attempt.lock if keep_lock else job_type.lock
    return msgspec.structs.replace(attempt, parameters=parameters, lock=lock), job_type


def _batch_on_types_as_they_are(ctx: ApiContext, batch_id: str, plan: Plan) -> None:
    """Every new attempt of a batch action on its type as it is now (``on_type_as_it_is``); 422
    BATCH_JOBS_CANNOT_RUN_AGAIN listing every job that cannot, nothing published then."""
    current: list[events.JobRequested] = []
    refused: list[CannotRunAgain] = []
    for attempt in plan.attempts:
        try:
            keep_lock = attempt.job_id in plan.replacing_running
            current.append(on_type_as_it_is(ctx, attempt, keep_lock=keep_lock)[0])
        except CannotRunAgain as exc:
            refused.append(exc)
    if refused:
        raise ApiError(
            422,
            "BATCH_JOBS_CANNOT_RUN_AGAIN",
            f"{len(refused)} of batch {batch_id!r}'s jobs cannot run again on their job types as "
            "they are now (the types file changed since): a type gone or parameters it now "
            "refuses, see refused; leave them out with the job_ids option.",
            refused=[exc.in_batch() for exc in refused[:MAX_LISTED_UNKNOWN]],
            refused_count=len(refused),
        )
    plan.attempts = current


def _raise_active(latest: Attempt) -> NoReturn:
    raise ApiError(
        409,
        "JOB_ACTIVE",
        f"The job's latest attempt {latest.id!r} is still {latest.status}; cancel it or wait "
        "for it to end before running the job again.",
        status=latest.status,
        latest=latest.id,
    )


async def archive_job(
    ctx: ApiContext, job_id: str, archived: bool, options: ActionOptions, principal: Principal
) -> JobArchiveChanged:
    check_options(Action.ARCHIVE if archived else Action.UNARCHIVE, options, on_job=True)
    job = await _visible_attempt(ctx, job_id, principal)
    event = events.JobArchived(job_id=job.id, archived=archived, requested_by=principal.name)
    seq = await eventstore.publish(ctx.js, ctx.names, event)
    await ctx.projection.wait_for(seq, READ_YOUR_WRITES_TIMEOUT)
    return JobArchiveChanged(id=job.id, archived=archived)
