"""What the HTTP API accepts and returns (not event contracts: those live in ``contracts``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class WebhookRequest(msgspec.Struct):
    """Where to POST the job's outcome when it ends. Other fields (seed 004's
    ``include_markdown``, ``include_metadata``) are accepted and ignored."""

    url: str
    headers: dict[str, str] = {}


class CreateJob(msgspec.Struct, forbid_unknown_fields=True):
    job_type: str
    parameters: dict[str, Any] = {}
    webhook: WebhookRequest | None = None


class JobCreated(msgspec.Struct, omit_defaults=True):
    id: str
    job_type: str
    status: str
    created_at: datetime
    # An external job's: shown here once (only its hash is stored); the worker reports to
    # callback_url with "Authorization: Bearer <callback_token>".
    callback_token: str | None = None
    callback_url: str | None = None


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


class WebhookAttempt(msgspec.Struct):
    delivery_id: str
    webhook_index: int
    url: str  # without query or user info
    attempt: int
    outcome: str  # retrying | delivered | failed
    status_code: int | None
    error: JobError | None
    duration_ms: float | None
    attempted_at: datetime


class WebhookDelivery(msgspec.Struct):
    """One webhook of the job: its state is its last attempt's outcome."""

    delivery_id: str
    webhook_index: int
    url: str
    state: str  # retrying | delivered | failed
    attempts: int
    last_status_code: int | None
    last_error: JobError | None
    last_attempt_at: datetime


class WebhookLog(msgspec.Struct):
    job_id: str
    deliveries: list[WebhookDelivery]
    items: list[WebhookAttempt]  # attempts by webhook, then attempt number


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
    webhook: WebhookRequest | None = None


class CreateBatch(msgspec.Struct, forbid_unknown_fields=True):
    """``{"batch": {...}}`` (seed 004's wrapper) is accepted too."""

    batch_name: str
    jobs: list[CreateBatchJob]


class ExternalCallback(msgspec.Struct):
    """Where an external job of a batch reports, and the token it reports with (shown once)."""

    job_id: str
    batch_index: int
    callback_token: str
    callback_url: str


class BatchCreated(msgspec.Struct, omit_defaults=True):
    batch_id: str
    batch_name: str
    total_jobs: int
    job_ids: list[str]  # in batch order: job_ids[i] is the job at batch_index i
    # One per external job of the batch, in batch order (left out when it has none).
    callbacks: list[ExternalCallback] = []


class Artifact(msgspec.Struct):
    name: str
    size: int
    content_type: str
    sha256: str
    stored_at: datetime
    url: str  # streams the file


class ArtifactList(msgspec.Struct):
    job_id: str
    items: list[Artifact]
    total_bytes: int
    archive_url: str | None  # a ZIP of them all; None when there are none
