"""What the HTTP API accepts and returns (not event contracts: those live in ``contracts``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class CreateJob(msgspec.Struct, forbid_unknown_fields=True):
    job_type: str
    parameters: dict[str, Any] = {}


class JobCreated(msgspec.Struct):
    id: str
    job_type: str
    status: str
    created_at: datetime


class JobError(msgspec.Struct):
    code: str
    message: str


class Progress(msgspec.Struct):
    current: int | None
    total: int | None
    percent: float | None
    phase: str | None
    message: str | None


class Job(msgspec.Struct):
    id: str
    job_type: str
    status: str
    parameters: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    exit_code: int | None
    error: JobError | None
    result: dict[str, Any] | None
    log_count: int
    progress: Progress | None
    lock: str | None
    requested_by: str | None
    cancelled_by: str | None
    cancel_requested_at: datetime | None
    updated_at: datetime
    batch_id: str | None = None
    batch_index: int | None = None  # the job's place in its batch, from 0
    attempt: int = 1  # a restart is a new job with the next attempt number
    attempt_of: str | None = None  # the first attempt's id (null for the first attempt)
    latest: bool = True  # false once a newer attempt exists
    archived: bool = False


class JobPage(msgspec.Struct):
    items: list[Job]
    next_cursor: str | None
    projected_seq: int | None = None  # the stream sequence this page reflects


class CancelAccepted(msgspec.Struct):
    id: str
    status: str
    cancel_requested: bool = True


class LogLine(msgspec.Struct):
    seq: int
    stream: str
    level: str
    timestamp: datetime
    text: str


class LogPage(msgspec.Struct):
    job_id: str
    status: str
    log_count: int
    items: list[LogLine]
    next_after: int | None  # pass as ?after= for the next page; null on the last page


class Batch(msgspec.Struct):
    """A batch's aggregates: the counters count the latest attempt of each of its jobs."""

    id: str
    name: str | None
    status: str
    total_jobs: int
    pending_jobs: int
    processing_jobs: int  # running
    completed_jobs: int
    failed_jobs: int
    cancelled_jobs: int
    progress_percent: float  # ended latest attempts / total_jobs * 100
    job_types: list[str]
    archived: bool
    failed_reason: str | None
    requested_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class BatchPage(msgspec.Struct):
    items: list[Batch]
    next_cursor: str | None
    projected_seq: int | None = None  # the stream sequence this page reflects


class BatchJobs(msgspec.Struct):
    items: list[Job]
    next_cursor: str | None  # pass as ?jobs_cursor= for the next page; null on the last page


class BatchDetail(Batch):
    """A batch with one page of its jobs, in batch order."""

    jobs: BatchJobs
class CreateBatchJob(msgspec.Struct, forbid_unknown_fields=True):
    job_type: str
    parameters: dict[str, Any] = {}


class CreateBatch(msgspec.Struct, forbid_unknown_fields=True):
    """``{"batch": {...}}`` (seed 004's wrapper) is accepted too."""

    batch_name: str
    jobs: list[CreateBatchJob]


class BatchCreated(msgspec.Struct):
    batch_id: str
    batch_name: str
    total_jobs: int
    job_ids: list[str]  # in batch order: job_ids[i] is the job at batch_index i
