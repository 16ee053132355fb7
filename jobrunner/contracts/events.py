"""Every fact about a job, as an event on JetStream.

Rules (the versioning contract, see README "Event contracts"):
- events are past tense, tagged by ``type`` and carry ``version``;
- a new field always gets a default; a field's type never changes;
- a consumer ignores event types and fields it does not know.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec

# Bounds a consumer can rely on (ARCHITECTURE invariant 9); the runner cleans what a tool prints
# to stay inside them. Counts fit Postgres' ``integer``.
MAX_COUNT = 2**31 - 1
MAX_PHASE_CHARS = 200
MAX_MESSAGE_CHARS = 2000
MAX_ERROR_CHARS = 4000  # what an internal job's exception may add to ErrorInfo.message
# A job's ``result``, encoded as JSON: larger results are cut, and say so in RESULT_CUT_FIELD.
MAX_RESULT_BYTES = 64 * 1024
RESULT_CUT_FIELD = "_cut"
# No control characters (NUL above all: Postgres text and jsonb cannot hold it).
_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"

# Enforced on decode. Only ProgressReported carries enforced bounds: an event stored before they
# existed and outside them fails to decode, and every consumer skips an undecodable event (the
# projector logs it, the SSE feeds drop it); losing an absurd progress report costs nothing.
# Lines and results are not constrained on decode: an old batch with one overlong or NUL line, or
# a result over the bound, would otherwise lose its whole batch or the job's ending. Their bounds
# are documented in the schema and kept by the producer.
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Percent = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]
Phase = Annotated[str, msgspec.Meta(max_length=MAX_PHASE_CHARS, pattern=_NO_CONTROL)]
Message = Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_CHARS, pattern=_NO_CONTROL)]
Result = Annotated[
    dict[str, Any],
    msgspec.Meta(
        description=f"At most {MAX_RESULT_BYTES} bytes as JSON, strings without control "
        f"characters; a result cut to fit says so in {RESULT_CUT_FIELD!r}."
    ),
]
LineText = Annotated[
    str,
    msgspec.Meta(
        description="At most the runner's max_line_bytes of UTF-8 (64 KiB by default) plus a "
        "split marker; NUL shown as U+2400."
    ),
]


def new_event_id() -> str:
    return uuid.uuid4().hex


def terminal_event_id(job_id: str) -> str:
    """The one event id every terminal StatusChanged of a job uses.

    JetStream de-duplicates on it, so when two parties race to end a job (a runner finishing it and
    another declaring its runner lost, or a cancel and a completion) only the first is stored.
    """
    return f"{job_id}-end"


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class ErrorCode(StrEnum):
    """Codes a client can act on; each comes with a human sentence in ``ErrorInfo.message``."""

    EXIT_NONZERO = "EXIT_NONZERO"
    SPAWN_FAILED = "SPAWN_FAILED"
    PROCESSING_TIMEOUT = "PROCESSING_TIMEOUT"
    RUNNER_LOST = "RUNNER_LOST"
    CANCELLED = "CANCELLED"
    LEASE_LOST = "LEASE_LOST"
    CALLABLE_FAILED = "CALLABLE_FAILED"  # an internal job's callable raised
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # A job of a batch whose submission never completed (no BatchSealed in time); it never ran.
    BATCH_INCOMPLETE = "BATCH_INCOMPLETE"


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries. ``event_id`` is sent as ``Nats-Msg-Id``."""

    job_id: str
    event_id: str = msgspec.field(default_factory=new_event_id)
    occurred_at: datetime = msgspec.field(default_factory=utcnow)
    version: int = 1


class JobRequested(Event, frozen=True, kw_only=True, tag="JobRequested"):
    """Someone asked for a job; the runner will pick it up."""

    job_type: str
    parameters: dict[str, Any] = {}
    lock: str | None = None
    requested_by: str | None = None
    batch_id: str | None = None
    # The job's place in its batch, from 0 (None outside a batch).
    batch_index: Count | None = None
    # Runs of the same work: a restart is a new job (its own id, events and log) with the next
    # attempt number, linked to the first attempt by ``attempt_of``. A batch counts each job's
    # latest attempt.
    attempt: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)] = 1
    attempt_of: str | None = None


class JobArchived(Event, frozen=True, kw_only=True, tag="JobArchived"):
    """The job was hidden from default lists (``archived``) or shown again (not ``archived``)."""

    archived: bool = True
    requested_by: str | None = None


class CancelRequested(Event, frozen=True, kw_only=True, tag="CancelRequested"):
    """Someone asked to stop a job (pending or running)."""

    requested_by: str | None = None
    reason: str | None = None


class StatusChanged(Event, frozen=True, kw_only=True, tag="StatusChanged"):
    """The job moved to a new status. Terminal statuses end the job's stream."""

    status: JobStatus
    exit_code: int | None = None
    error: ErrorInfo | None = None
    runner_id: str | None = None
    cancelled_by: str | None = None
    result: Result | None = None


class LogLine(msgspec.Struct, frozen=True, array_like=True):
    """One line of output. ``seq`` counts from 1 per job, across stdout and stderr."""

    seq: int
    stream: str  # "stdout" | "stderr"
    level: str  # DEBUG | INFO | SUCCESS | WARNING | ERROR
    timestamp: datetime
    text: LineText


class LineLogged(Event, frozen=True, kw_only=True, tag="LineLogged"):
    """One or more consecutive output lines of a job (batched on the wire for throughput)."""

    lines: list[LogLine]


class ProgressReported(Event, frozen=True, kw_only=True, tag="ProgressReported"):
    """The tool reported how far it is (from ``[i/N]`` lines or the progress protocol)."""

    current: Count | None = None
    total: Count | None = None
    percent: Percent | None = None
    phase: Phase | None = None
    message: Message | None = None


class BatchEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every batch event carries (on the batch's own subjects, see ``names``)."""

    batch_id: str
    event_id: str = msgspec.field(default_factory=new_event_id)
    occurred_at: datetime = msgspec.field(default_factory=utcnow)
    version: int = 1


class BatchRequested(BatchEvent, frozen=True, kw_only=True, tag="BatchRequested"):
    """A batch was submitted. Its jobs follow as JobRequested with this ``batch_id`` (and their
    ``batch_index``), then BatchSealed; no job of the batch starts before the seal."""

    batch_name: str
    total_jobs: Count
    job_types: list[str] = []  # the distinct job types, sorted
    requested_by: str | None = None


class BatchSealed(BatchEvent, frozen=True, kw_only=True, tag="BatchSealed"):
    """Every JobRequested of the batch is stored: its jobs may start."""

    total_jobs: Count


class BatchRestarted(BatchEvent, frozen=True, kw_only=True, tag="BatchRestarted"):
    """Jobs of the batch run again, each as a new attempt (JobRequested with ``attempt_of``)
    published after this event. ``mode`` is ``all`` (POST .../restart) or ``unfinished``
    (POST .../pending: the jobs whose latest attempt failed or was cancelled)."""

    mode: str
    job_ids: list[str] = []  # the attempts being replaced, in batch order
    requested_by: str | None = None
    reason: Message | None = None


class BatchFailed(BatchEvent, frozen=True, kw_only=True, tag="BatchFailed"):
    """The batch was stopped: its pending jobs never start, its running ones are cancelled, and
    it ends failed with ``reason``."""

    reason: Message
    requested_by: str | None = None


class BatchArchived(BatchEvent, frozen=True, kw_only=True, tag="BatchArchived"):
    """The batch was hidden from default lists (``archived``) or shown again."""

    archived: bool = True
    requested_by: str | None = None


JobEvent = (
    JobRequested | JobArchived | CancelRequested | StatusChanged | LineLogged | ProgressReported
)
AnyBatchEvent = BatchRequested | BatchSealed | BatchRestarted | BatchFailed | BatchArchived
AnyEvent = JobEvent | AnyBatchEvent
# What can be published: any job or batch event.
Publishable = Event | BatchEvent
EVENT_TYPES: tuple[type[Event] | type[BatchEvent], ...] = (
    JobRequested,
    JobArchived,
    CancelRequested,
    StatusChanged,
    LineLogged,
    ProgressReported,
    BatchRequested,
    BatchSealed,
    BatchRestarted,
    BatchFailed,
    BatchArchived,
)


class ProjectedNotice(msgspec.Struct, frozen=True):
    """Not an event (never stored): the projector announces on ``Names.projected_subject`` the
    stream sequence it has committed up to, so the API can answer read-your-writes."""

    last_seq: int
