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
