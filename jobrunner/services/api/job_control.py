"""Cancelling jobs and telling a caller that a lock is busy: shared by every route that stops or
starts jobs (one job's cancel, a batch's fail, a restart of a running job).

Cancel, for one job or many: CancelRequested; for a job that never started also its end
(``cancelled``) at once, under the job's one terminal event id, so that a runner starting it at
that very moment (it sees the cancel and stops it) cannot store a second ending; then its queue
place and any slot reservation are given back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jobrunner.common import endings, metrics
from jobrunner.common.slots import UNKNOWN_HOLDER, slot_key
from jobrunner.contracts.events import JobStatus
from jobrunner.services.api import readmodels, schemas
from jobrunner.services.api.actions import Attempt, cancel_events
from jobrunner.services.api.context import READ_YOUR_WRITES_TIMEOUT, ApiContext
from jobrunner.services.api.dependencies import find_job
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.security import Principal


async def cancel(
    ctx: ApiContext, job_id: str, principal: Principal | None = None
) -> schemas.CancelAccepted:
    """Cancel one job: a pending one at once, a running one by its runner; 409 once ended."""
    row = await find_job(ctx, job_id, principal)
    if JobStatus(row["status"]).is_terminal:
        raise ApiError(
            409,
            "JOB_FINISHED",
            f"The job already ended with status {row['status']!r}.",
            status=row["status"],
        )
    job = Attempt(id=job_id, job_type=row["job_type"], status=row["status"], lock=row["lock"])
    seq, ended = await cancel_jobs(ctx, [job], principal.name if principal is not None else None)
    if job.status == JobStatus.PENDING:
        outcome = ended[job_id]
        first = outcome.first
        if first is not None and first.status.is_terminal and first.status != JobStatus.CANCELLED:
            # It ended another way first (a runner took it meanwhile): as if the read model
            # had shown that already.
            raise ApiError(
                409,
                "JOB_FINISHED",
                f"The job already ended with status {first.status.value!r}.",
                status=first.status.value,
            )
        await ctx.projection.wait_for(seq, READ_YOUR_WRITES_TIMEOUT)
        if outcome.stored:
            return schemas.CancelAccepted(id=job_id, status=JobStatus.CANCELLED.value)
        if first is not None:
            # Cancelled first by someone else (its status says so), or started meanwhile: its
            # runner stops it on the cancel and ends it with its tool's exit code (see
            # endings.store's unless_started).
            return schemas.CancelAccepted(id=job_id, status=first.status.value)
        # No ending could be stored (see endings.store): its cancel is, so it never starts.
    return schemas.CancelAccepted(id=job_id, status=row["status"])


async def cancel_jobs(
    ctx: ApiContext, jobs: Sequence[Attempt], actor: str | None, reason: str | None = None
) -> tuple[int, dict[str, endings.Stored]]:
    """Cancel jobs that have not ended (as the read model saw them); returns the last stream
    sequence published (0 when there was nothing to do) and how each pending job's end went."""
    batch = [event for job in jobs for event in cancel_events(job, actor, reason)]
    if not batch:
        return 0, {}
    seq, ended = await endings.publish_with_endings(ctx.js, ctx.names, batch)
    await give_back_places(ctx, [job for job in jobs if job.status == JobStatus.PENDING], ended)
    return seq, ended


async def give_back_places(
    ctx: ApiContext, cancelled_pending: Sequence[Attempt], ended: dict[str, endings.Stored]
) -> None:
    """Drop the queue entries and slot reservations of jobs cancelled before they started (their
    ends stored already, here or by whoever ended them first: counted here only when here; both
    ways of cancelling come through here)."""
    by_lock: dict[str, list[str]] = {}
    for job in cancelled_pending:
        outcome = ended.get(job.id)
        if outcome is not None and outcome.stored:
            metrics.job_ended(job.job_type, JobStatus.CANCELLED.value)
        if job.lock:
            by_lock.setdefault(job.lock, []).append(job.id)
    for lock, job_ids in by_lock.items():
        await ctx.slots.dequeue_many(lock, job_ids)
        # A lock has one slot, so at most one of them can hold its reservation.
        holder = await ctx.slots.current(slot_key(lock, job_ids[0]))
        if (
            holder is not None
            and holder.value.phase == "reserved"
            and holder.value.job_id in job_ids
        ):
            await ctx.slots.release(holder)


async def raise_busy(ctx: ApiContext, key: str, lock: str, principal: Principal) -> None:
    """409 SLOT_BUSY, naming the job that holds the lock when the caller may see it."""
    holder = await ctx.slots.current(key)
    if holder is not None and holder.value == UNKNOWN_HOLDER:
        holder = None  # busy, held by no job it can name (slots.py)
    running: dict[str, Any] | None = None
    row = await readmodels.get_job_row(ctx.pool, holder.value.job_id) if holder else None
    # A token limited to its own jobs learns that the lock is busy, not whose job holds it.
    visible = principal.owner is None or (row is not None and principal.can_see(row))
    if holder is not None and visible:
        running = {
            "id": holder.value.job_id,
            "job_type": row["job_type"] if row else holder.value.job_type,
            "status": row["status"] if row else "pending",
            # Encoded as every time of the API is ("...Z"), not isoformat's "+00:00".
            "started_at": row["started_at"] if row else None,
        }
    # The holder may still be pending (just accepted, or its runner starting it): the sentence
    # says what the caller may know of it, never "running" when it is not.
    holder_text = (
        f"Job {running['id']} ({running['job_type']}, {running['status']})"
        if running
        else "Another job"
    )
    raise ApiError(
        409,
        "SLOT_BUSY",
        f"{holder_text} holds lock {lock!r}; wait for it to end or cancel it.",
        running_job=running,
    )
