"""What a webhook receives: seed 004's callback body, built from the job's own events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from jobrunner.contracts import events


class PayloadProgress(msgspec.Struct, kw_only=True):
    step: str | None  # seed 004's name for the phase
    percent: float | None
    current: int | None
    total: int | None
    message: str | None


class PayloadError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    details: dict[str, Any] | None = None


class Payload(msgspec.Struct, kw_only=True):
    job_id: str
    job_type: str
    status: str
    progress: PayloadProgress | None
    # Seed 004 calls the job's result ``results``; jobrunner's API calls it ``result``. Both
    # carry the same object so receivers written for either read it.
    results: dict[str, Any] | None
    result: dict[str, Any] | None
    error: PayloadError | None
    exit_code: int | None
    batch_id: str | None
    attempt: int
    created_at: datetime
    finished_at: datetime
    delivery_id: str


def event_name(end: events.StatusChanged) -> str:
    """The ``X-Jobrunner-Event`` header: ``job.completed``, ``job.failed``, ``job.cancelled``."""
    return f"job.{end.status.value}"


def build(
    request: events.JobRequested,
    end: events.StatusChanged,
    progress: events.ProgressReported | None,
    delivery_id: str,
) -> bytes:
    """The body, encoded once: the signature is computed over exactly these bytes."""
    shown_progress = None
    if progress is not None:
        shown_progress = PayloadProgress(
            step=progress.phase,
            percent=progress.percent,
            current=progress.current,
            total=progress.total,
            message=progress.message,
        )
    if end.status == events.JobStatus.COMPLETED:
        # A completed job is done all the way, whatever its last report said.
        shown_progress = PayloadProgress(
            step="completed",
            percent=100.0,
            current=shown_progress.current if shown_progress else None,
            total=shown_progress.total if shown_progress else None,
            message=shown_progress.message if shown_progress else None,
        )
    error = None
    if end.error is not None:
        error = PayloadError(code=end.error.code, message=end.error.message)
    return msgspec.json.encode(
        Payload(
            job_id=end.job_id,
            job_type=request.job_type,
            status=end.status.value,
            progress=shown_progress,
            results=end.result,
            result=end.result,
            error=error,
            exit_code=end.exit_code,
            batch_id=request.batch_id,
            attempt=request.attempt,
            created_at=request.occurred_at,
            finished_at=end.occurred_at,
            delivery_id=delivery_id,
        )
    )
