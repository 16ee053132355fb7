"""Pure functions from an event to the row changes it makes. No I/O here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from itertools import repeat
from operator import add
from typing import Any

import msgspec

from jobrunner.contracts import events
from jobrunner.contracts.events import TERMINAL_STATUSES, JobStatus
from jobrunner.services.projector import storable
from jobrunner.services.projector.nulfree import (
    NulFreeCancelRequested,
    NulFreeEvent,
    NulFreeJobRequested,
    NulFreeLineLogged,
    NulFreeProgressReported,
    NulFreeStatusChanged,
    NulFreeWebhookAttempted,
)
from jobrunner.services.projector.storable import optional_text, text

# Changes are msgspec Structs, not dataclasses: a replay makes one per event, and these are
# several times cheaper to create (and, with gc=False, invisible to the cycle collector).


class JobCreated(msgspec.Struct, frozen=True, gc=False):
    row: dict[str, Any]


class JobUpdated(msgspec.Struct, frozen=True, gc=False):
    """Set ``fields`` on a job; ``only_if_active`` skips jobs that already ended."""

    job_id: str
    fields: dict[str, Any]
    stream_seq: int
    only_if_active: bool = True
    only_if_status: frozenset[str] | None = None


class BatchChanged(msgspec.Struct, frozen=True, gc=False):
    """Set ``fields`` on a batch's row, creating the row when no event made it yet (a batch event
    may come before its BatchRequested). ``requested``: the event is the BatchRequested, whose
    time and sequence are the batch's creation."""

    batch_id: str
    fields: dict[str, Any]
    stream_seq: int
    occurred_at: datetime
    requested: bool = False


# A line's row, in the order of ``store.LINE_COLUMNS``: the line's own fields as the event lays
# them out (seq, stream, level, ts, text), then its job and the event's stream sequence.
LineRow = tuple[int, str, str, datetime, str, str, int]


class LinesAppended(msgspec.Struct, frozen=True, gc=False):
    job_id: str
    rows: list[LineRow] = []


class WebhookAttemptRecorded(msgspec.Struct, frozen=True, gc=False):
    """One row of a job's webhook delivery log (columns as ``WEBHOOK_COLUMNS``)."""

    row: tuple[Any, ...]


WEBHOOK_COLUMNS = (
    "job_id",
    "delivery_id",
    "attempt",
    "webhook_index",
    "url",
    "outcome",
    "status_code",
    "error_code",
    "error_message",
    "duration_ms",
    "attempted_at",
    "stream_seq",
)


class ArtifactRecorded(msgspec.Struct, frozen=True, gc=False):
    """A row of the artifacts table (a later one of the same job and name replaces it)."""

    row: dict[str, Any]


class Unreadable(msgspec.Struct, frozen=True, gc=False):
    """A stored message that is no event this version can read: it is set aside (recorded in
    the table of events the projector could not apply), never applied."""

    error: str


Change = (
    JobCreated
    | JobUpdated
    | BatchChanged
    | LinesAppended
    | WebhookAttemptRecorded
    | ArtifactRecorded
    | Unreadable
)


def project(event: events.AnyEvent | NulFreeEvent, stream_seq: int) -> list[Change]:
    """The row changes of one event. Every value is made storable here (storable.py): what a
    column cannot hold is changed the same way in the live projector and in a replay (an event
    of nulfree.py's types holds no NUL: its strings are stored as decoded)."""
    if type(event) is NulFreeLineLogged:  # most events are lines: asked first
        # Each line's row is its decoded tuple and the same two fields after it, joined in C
        # (``map``): no Python step per line.
        lines = event.lines
        rows = list(map(add, lines, repeat((event.job_id, stream_seq), len(lines))))
        return [LinesAppended(event.job_id, rows)]
    if type(event) is events.LineLogged:  # a line with NUL in it: cleaned
        return _lines(event, stream_seq)
    kind = type(event)
    # One dictionary look-up instead of a chain of class patterns (a replay asks a million
    # times); a type not in it yet (a subclass of an event type, should one come) is
    # projected as its nearest base, found once.
    try:
        projection = _BY_TYPE[kind]
    except KeyError:
        projection = _BY_TYPE[kind] = _projection_of(kind)
    return projection(event, stream_seq) if projection is not None else []


def _lines(event: events.LineLogged, stream_seq: int) -> list[Change]:
    job_id = text(event.job_id)
    return [LinesAppended(job_id, _line_rows(event.lines, job_id, stream_seq))]


def _job_requested(event: events.JobRequested, stream_seq: int) -> list[Change]:
    row: dict[str, Any] = {
        "id": event.job_id,
        "job_type": event.job_type,
        "status": _PENDING,
        "parameters": event.parameters,
        "lock": event.lock,
        "requested_by": event.requested_by,
        "batch_id": event.batch_id,
        "batch_index": event.batch_index,
        "attempt": event.attempt,
        "attempt_of": event.attempt_of,
        "created_at": event.occurred_at,
        "updated_at": event.occurred_at,
        "first_seq": stream_seq,
        "last_seq": stream_seq,
    }
    if type(event) is not NulFreeJobRequested:
        # Every string made storable at once: the columns' names hold no NUL, and the values
        # that are no string nor JSON (times, numbers, None) are kept as they are.
        row = storable.json_value(row)
    return [JobCreated(row)]


_PENDING = JobStatus.PENDING.value


_ONLY_IF_PENDING = frozenset({"pending"})
_RUNNING = JobStatus.RUNNING


def _status_changed(event: events.StatusChanged, stream_seq: int) -> list[Change]:
    nul_free = type(event) is NulFreeStatusChanged
    job_id = event.job_id if nul_free else text(event.job_id)
    status = event.status
    # The member's value by its plain attribute, and members told apart by identity: Enum's
    # ``value``, ``is_terminal`` and ``JobStatus.RUNNING`` each cost a Python-level call (together
    # about a microsecond per status change, of which a replay projects 200,000 a million events).
    fields: dict[str, Any] = {"status": status._value_, "updated_at": event.occurred_at}
    if status is _RUNNING:
        fields["started_at"] = event.occurred_at
        fields["runner_id"] = event.runner_id if nul_free else optional_text(event.runner_id)
        # A job only starts from pending; a late "running" never revives an ended job.
        return [JobUpdated(job_id, fields, stream_seq, only_if_status=_ONLY_IF_PENDING)]
    if status in TERMINAL_STATUSES:
        fields["finished_at"] = event.occurred_at
        # An exit code beyond the integer column is no real one: none is shown (the error code
        # and message still say how the job ended), rather than a made-up number.
        fields["exit_code"] = storable.int4_or_none(event.exit_code)
        if event.error is not None:
            fields["error_code"] = event.error.code
            fields["error_message"] = event.error.message
        if event.result is not None:
            fields["result"] = event.result
        if event.cancelled_by is not None:
            fields["cancelled_by"] = event.cancelled_by
        if not nul_free:
            # Every string made storable at once (the result's too): the columns' names hold
            # no NUL, and times, numbers and None are kept as they are.
            fields = storable.json_value(fields)
    # The first terminal status wins: a fenced-off runner cannot overwrite it.
    return [JobUpdated(job_id, fields, stream_seq)]


def _job_archived(event: events.JobArchived, stream_seq: int) -> list[Change]:
    # Archiving hides an ended job as well as an active one.
    return [
        JobUpdated(
            text(event.job_id),
            {"archived": event.archived, "updated_at": event.occurred_at},
            stream_seq,
            only_if_active=False,
        )
    ]


def _cancel_requested(event: events.CancelRequested, stream_seq: int) -> list[Change]:
    nul_free = type(event) is NulFreeCancelRequested
    return [
        JobUpdated(
            event.job_id if nul_free else text(event.job_id),
            {
                "cancel_requested_at": event.occurred_at,
                "cancelled_by": event.requested_by
                if nul_free
                else optional_text(event.requested_by),
                "updated_at": event.occurred_at,
            },
            stream_seq,
        )
    ]


def _progress_reported(event: events.ProgressReported, stream_seq: int) -> list[Change]:
    nul_free = type(event) is NulFreeProgressReported
    fields: dict[str, Any] = {"updated_at": event.occurred_at}
    # A count beyond the integer column is clamped, not dropped: the bar still shows the job
    # far along (and "current of total" keeps its order at the column's end).
    if event.current is not None:
        fields["progress_current"] = storable.clamp_int4(event.current)
    if event.total is not None:
        fields["progress_total"] = storable.clamp_int4(event.total)
    if event.percent is not None:
        fields["progress_percent"] = storable.percent(event.percent)
    if event.phase is not None:
        fields["phase"] = event.phase if nul_free else text(event.phase)
    if event.message is not None:
        fields["message"] = event.message if nul_free else text(event.message)
    return [JobUpdated(event.job_id if nul_free else text(event.job_id), fields, stream_seq)]


def _webhook_attempted(event: events.WebhookAttempted, stream_seq: int) -> list[Change]:
    if type(event) is NulFreeWebhookAttempted:
        return [_webhook_attempt(event, event.job_id, stream_seq, str)]
    return [_webhook_attempt(event, text(event.job_id), stream_seq, text)]


def _artifact_stored(event: events.ArtifactStored, stream_seq: int) -> list[Change]:
    job_id = text(event.job_id)
    return [
        ArtifactRecorded(
            {
                "job_id": job_id,
                "name": text(event.name),
                "size": event.size,
                "content_type": text(event.content_type),
                "sha256": text(event.sha256),
                "object_name": text(event.object_name),
                "stored_at": event.occurred_at,
                "stream_seq": stream_seq,
            }
        ),
        JobUpdated(job_id, {"updated_at": event.occurred_at}, stream_seq),
    ]


def _batch_event(event: events.BatchEvent, stream_seq: int) -> list[Change]:
    return [_batch_change(event, stream_seq)]


Projection = Callable[[Any, int], list[Change]]
_BY_BASE: dict[type, Projection] = {
    events.LineLogged: _lines,
    events.JobRequested: _job_requested,
    events.StatusChanged: _status_changed,
    events.JobArchived: _job_archived,
    events.CancelRequested: _cancel_requested,
    events.ProgressReported: _progress_reported,
    events.WebhookAttempted: _webhook_attempted,
    events.ArtifactStored: _artifact_stored,
    events.BatchEvent: _batch_event,
}


def _projection_of(kind: type) -> Projection | None:
    return next((_BY_BASE[base] for base in kind.__mro__ if base in _BY_BASE), None)


# Every event type by itself (the batch events' projection is their base's), so the usual
# event is one look-up, never a walk of its class' bases.
_BY_TYPE: dict[type, Projection | None] = {
    kind: _projection_of(kind)
    for kind in (
        *events.EVENT_TYPES,
        NulFreeJobRequested,
        NulFreeStatusChanged,
        NulFreeProgressReported,
        NulFreeCancelRequested,
        NulFreeWebhookAttempted,
    )
}


def _line_rows(lines: list[events.LogLine], job_id: str, stream_seq: int) -> list[LineRow]:
    """The rows of a LineLogged's lines, each field made storable. ``text()`` is inlined as one
    test per line for the usual case, a line without NUL anywhere."""
    rows: list[LineRow] = []
    append = rows.append
    for ln in lines:
        stream, level, line_text = ln.stream, ln.level, ln.text
        if "\x00" in stream or "\x00" in level or "\x00" in line_text:
            stream, level, line_text = text(stream), text(level), text(line_text)
        # Out of range, a line's number cannot be stored: it is the key, so neither clamping
        # nor NULL would do (the event is set aside).
        append((ln.seq, stream, level, ln.timestamp, line_text, job_id, stream_seq))
    return rows


def _webhook_attempt(
    event: events.WebhookAttempted, job_id: str, stream_seq: int, clean: Callable[[str], str]
) -> WebhookAttemptRecorded:
    """The attempt's row; ``clean`` makes each of its strings storable (``str``, which returns
    a string as it is, for an event of a message without NUL)."""
    error = event.error
    return WebhookAttemptRecorded(
        (
            job_id,
            clean(event.delivery_id),
            storable.clamp_int4(event.attempt),
            storable.clamp_int4(event.webhook_index),
            clean(event.url),
            clean(event.outcome.value),
            storable.int4_or_none(event.status_code),
            clean(error.code) if error is not None else None,
            clean(error.message) if error is not None else None,
            event.duration_ms,  # double precision holds any float
            event.occurred_at,
            stream_seq,
        )
    )


def _batch_change(event: events.AnyBatchEvent | events.BatchEvent, stream_seq: int) -> BatchChanged:
    """The batch row's own fields; its counters, status and times are recounted from its jobs
    where the change is applied (store.py)."""
    fields: dict[str, Any] = {}
    requested = False
    match event:
        case events.BatchRequested():
            requested = True
            fields = {
                "name": text(event.batch_name),
                "requested_by": optional_text(event.requested_by),
                "job_types": sorted({text(t) for t in event.job_types}),
                "total_jobs": event.total_jobs,
            }
        case events.BatchSealed():
            fields = {"sealed": True, "total_jobs": event.total_jobs}
        case events.BatchRestarted():
            # A restart ends a BatchFailed: the status is derived from the jobs again.
            fields = {"failed_reason": None, "failed_by": None, "failed_at": None}
        case events.BatchFailed():
            fields = {
                "failed_reason": text(event.reason),
                "failed_by": optional_text(event.requested_by),
                "failed_at": event.occurred_at,
            }
        case events.BatchArchived():
            fields = {"archived": event.archived}
    return BatchChanged(
        text(event.batch_id), fields, stream_seq, event.occurred_at, requested=requested
    )
