"""What an action on a batch or a job does: which jobs it touches and which events it publishes.

Pure functions of the read model's rows (the latest attempt of each job of a batch) to a plan;
``action_executor`` carries a plan out. History is immutable, so nothing is ever "reset": a job
that runs again is a new attempt (its own id, events and log) linked to the first attempt.

A new attempt's id is derived from the first attempt's id and its attempt number. The same
action sent twice (a client retrying after a lost answer, an API killed half-way) therefore
publishes the same ids: JetStream drops the repeated JobRequested (same ``Nats-Msg-Id``), and a
runner that meets a job id it already started or ended does not run it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

import msgspec

from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus


class Action(StrEnum):
    RESTART = "restart"
    PENDING = "pending"
    FAIL = "fail"
    ARCHIVE = "archive"
    UNARCHIVE = "unarchive"


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """A job's latest attempt, as the read model shows it (the columns an action needs)."""

    id: str
    job_type: str
    status: str
    parameters: dict[str, Any] = {}
    lock: str | None = None
    requested_by: str | None = None
    batch_id: str | None = None
    batch_index: int | None = None
    attempt: int = 1
    attempt_of: str | None = None

    @property
    def root(self) -> str:
        """The first attempt's id: what every attempt of this job is linked to."""
        return self.attempt_of or self.id

    @property
    def ended(self) -> bool:
        return JobStatus(self.status).is_terminal


class Plan(msgspec.Struct, kw_only=True):
    """Events in publishing order: ``first`` (the batch event, then cancels), then the new
    attempts (``attempts``), whose locked ones are queued in this order just before."""

    first: list[events.Publishable] = []
    attempts: list[events.JobRequested] = []
    # Latest attempts this action touched (replaced or cancelled), in batch order.
    touched: list[str] = []
    # Pending attempts cancelled here: their queue places and reservations are given back.
    cancelled_pending: list[Attempt] = []
    # New attempts that replace a still-running attempt: they keep its lock (or its job slot),
    # so they wait for it to end even when the job type has moved to another lock since.
    replacing_running: set[str] = set()


def attempt_job_id(root: str, attempt: int) -> str:
    """The id of attempt ``attempt`` (2, 3, ...) of the job whose first attempt is ``root``."""
    return hashlib.sha256(f"{root}:attempt:{attempt}".encode()).hexdigest()[:32]


def next_attempt(latest: Attempt, actor: str | None) -> events.JobRequested:
    """The JobRequested that runs ``latest``'s work again, as the next attempt."""
    number = latest.attempt + 1
    job_id = attempt_job_id(latest.root, number)
    return events.JobRequested(
        job_id=job_id,
        event_id=f"{job_id}-requested",
        job_type=latest.job_type,
        parameters=latest.parameters,
        lock=latest.lock,
        requested_by=latest.requested_by,
        restarted_by=actor,
        batch_id=latest.batch_id,
        batch_index=latest.batch_index,
        attempt=number,
        attempt_of=latest.root,
    )


def cancel_events(
    latest: Attempt, actor: str | None, reason: str | None
) -> list[events.Publishable]:
    """What cancelling one attempt publishes, exactly as ``DELETE /api/jobs/{id}`` does: the
    request, and for a job that never started its end at once (under the job's one terminal
    event id, so a runner starting it at that moment cannot add a second ending)."""
    out: list[events.Publishable] = [
        events.CancelRequested(job_id=latest.id, requested_by=actor, reason=reason)
    ]
    if latest.status == JobStatus.PENDING:
        out.append(
            events.StatusChanged(
                job_id=latest.id,
                event_id=events.terminal_event_id(latest.id),
                status=JobStatus.CANCELLED,
                cancelled_by=actor,
            )
        )
    return out


def in_batch_order(latest: Iterable[Attempt]) -> list[Attempt]:
    return sorted(latest, key=lambda a: (a.batch_index is None, a.batch_index or 0, a.id))


def plan_restart(
    batch_id: str,
    latest: Sequence[Attempt],
    actor: str | None,
    *,
    unfinished_only: bool,
    reason: str | None = None,
    selected: frozenset[str] | None = None,
) -> Plan:
    """``restart`` (every latest attempt that is not pending) or ``pending`` (``unfinished_only``:
    those that failed or were cancelled) runs jobs again as new attempts.

    A running attempt (restart only) is cancelled first; its new attempt waits until it has ended
    (attempts of one job share one slot). ``selected`` limits the action to those jobs (by the
    ids of their latest attempts).
    """
    plan = Plan()
    replaced: list[Attempt] = []
    for job in in_batch_order(latest):
        if selected is not None and job.id not in selected:
            continue
        if job.status == JobStatus.PENDING:
            continue  # it has not run yet: it will
        if unfinished_only and job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            continue
        replaced.append(job)
    plan.first.append(
        events.BatchRestarted(
            batch_id=batch_id,
            mode="unfinished" if unfinished_only else "all",
            job_ids=[job.id for job in replaced],
            requested_by=actor,
            reason=reason,
        )
    )
    for job in replaced:
        if job.status == JobStatus.RUNNING:
            plan.first.append(
                events.CancelRequested(job_id=job.id, requested_by=actor, reason=reason)
            )
        attempt = next_attempt(job, actor)
        if job.status == JobStatus.RUNNING:
            plan.replacing_running.add(attempt.job_id)
        plan.touched.append(job.id)
        plan.attempts.append(attempt)
    return plan


def plan_fail(
    batch_id: str,
    latest: Sequence[Attempt],
    actor: str | None,
    reason: str,
    *,
    already_failed: bool,
) -> Plan:
    """``fail``: BatchFailed (unless the batch already failed by request: then this only
    finishes what a first, interrupted fail left), then every pending latest attempt cancelled
    (it never starts), then every running one. Pending ones go first so that a running job's
    freed lock cannot start the next job of the batch in between."""
    plan = Plan()
    if not already_failed:
        plan.first.append(events.BatchFailed(batch_id=batch_id, reason=reason, requested_by=actor))
    ordered = in_batch_order(latest)
    for status in (JobStatus.PENDING, JobStatus.RUNNING):
        for job in ordered:
            if job.status != status:
                continue
            plan.first.extend(cancel_events(job, actor, reason))
            plan.touched.append(job.id)
            if status == JobStatus.PENDING:
                plan.cancelled_pending.append(job)
    return plan


def unknown_jobs(requested: Sequence[str], known: Iterable[str]) -> list[str]:
    """The requested job ids that are not jobs of the batch, in the order given, once each."""
    known_ids = set(known)
    seen: set[str] = set()
    out: list[str] = []
    for job_id in requested:
        if job_id not in known_ids and job_id not in seen:
            seen.add(job_id)
            out.append(job_id)
    return out
