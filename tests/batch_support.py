"""Batches published by hand, as the batch endpoints would publish them: BatchRequested, every
JobRequested with its place, BatchSealed; then statuses and attempts chosen by the test."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from tests.history_support import BASE_TIME

Event = events.Event | events.BatchEvent


def batch_job_id(batch_id: str, index: int, attempt: int = 1) -> str:
    return f"{batch_id}-{index}" if attempt == 1 else f"{batch_id}-{index}-a{attempt}"


def batch_events(
    batch_id: str,
    total: int,
    name: str | None = None,
    job_types: Sequence[str] = ("scraper",),
    requested_by: str | None = None,
    at: datetime = BASE_TIME,
) -> list[Event]:
    """A submitted batch of ``total`` pending jobs (types taken in turn from ``job_types``)."""
    out: list[Event] = [
        events.BatchRequested(
            batch_id=batch_id,
            batch_name=name or f"Batch {batch_id}",
            total_jobs=total,
            job_types=sorted(set(job_types)),
            requested_by=requested_by,
            event_id=f"{batch_id}-requested",
            occurred_at=at,
        )
    ]
    for index in range(total):
        job_id = batch_job_id(batch_id, index)
        out.append(
            events.JobRequested(
                job_id=job_id,
                job_type=job_types[index % len(job_types)],
                batch_id=batch_id,
                batch_index=index,
                requested_by=requested_by,
                event_id=f"{job_id}-requested",
                occurred_at=at,
            )
        )
    out.append(
        events.BatchSealed(
            batch_id=batch_id, total_jobs=total, event_id=f"{batch_id}-sealed", occurred_at=at
        )
    )
    return out


def ended(job_id: str, status: JobStatus, at: datetime = BASE_TIME) -> list[Event]:
    """The job runs, then ends with ``status``."""
    return [
        events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING, occurred_at=at),
        events.StatusChanged(
            job_id=job_id,
            event_id=events.terminal_event_id(job_id),
            status=status,
            occurred_at=at + timedelta(seconds=1),
        ),
    ]


def attempt(
    batch_id: str, index: int, number: int, job_type: str = "scraper", by: str | None = None
) -> Event:
    """Attempt ``number`` of the batch's job at ``index``, as a restart publishes it."""
    job_id = batch_job_id(batch_id, index, number)
    return events.JobRequested(
        job_id=job_id,
        job_type=job_type,
        batch_id=batch_id,
        batch_index=index,
        attempt=number,
        attempt_of=batch_job_id(batch_id, index),
        requested_by=by,
        event_id=f"{job_id}-requested",
    )
