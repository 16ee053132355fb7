"""Every fact about a job, as an event on JetStream.

Rules (the versioning contract, see README "Event contracts"):
- events are past tense, tagged by ``type`` and carry ``version``;
- a new field always gets a default; a field's type never changes;
- a consumer ignores event types and fields it does not know.

``CONTRACT_VERSION`` is the version of these rules' contract as a whole. Changes that keep the
rules (a new event type, a new field with a default) keep it. A change that breaks them (a field's
type or an event's meaning changed, a subject moved) raises it; such a change must still decode
the events of every older contract version. The stream records the highest contract version its
writers use (``Names.contract_metadata_key`` in its metadata); a service starting against a stream
of a higher version than its own refuses to start.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
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
_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*\Z"  # \Z: "$" would let a final line break through

# Enforced on decode. Only ProgressReported (and ArtifactStored, whose names the runner checks
# before it stores a file) carries enforced bounds: an event stored before they
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


CONTRACT_VERSION = 1


def new_event_id() -> str:
    return uuid.uuid4().hex


def new_job_id() -> str:
    """A new job's id: 32 hex digits laid out as a UUIDv7, the time in milliseconds first, then
    74 random bits. A later job's id sorts after an earlier one's, so a new job's rows go at the
    end of the read models' keys (``log_lines`` is keyed by ``(job_id, seq)``): Postgres appends
    its lines to the key's rightmost page (its fast path, no descent from the root, pages split
    full) instead of into the middle, which costs a flood of lines about a third more of
    Postgres' CPU (bench/RESULTS.md, session 11). Ids stay opaque strings: nothing parses them,
    and older (random) ids keep working beside these."""
    ms = time.time_ns() // 1_000_000
    value = (ms & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # the version nibble: 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # the variant bits: RFC 4122
    return f"{value:032x}"


def terminal_event_id(job_id: str) -> str:
    """The one event id every terminal StatusChanged of a job uses.

    JetStream de-duplicates on it, so when two parties race to end a job (a runner finishing it and
    another declaring its runner lost, or a cancel and a completion) only the first is stored.
    """
    return f"{job_id}-end"


# How many ids past ``terminal_event_id`` a job's ending may take (see ``terminal_event_ids``).
FALLBACK_ENDINGS = 4


def terminal_event_ids(job_id: str) -> list[str]:
    """The ids a job's ending is stored under, tried in order: ``<id>-end``, then, should a
    message jobrunner did not write have taken it, ``<id>-end-2`` up to ``<id>-end-5``. Every
    writer tries the same ids, so JetStream still keeps one ending when two race."""
    first = terminal_event_id(job_id)
    return [first, *(f"{first}-{n}" for n in range(2, FALLBACK_ENDINGS + 2))]


def utcnow() -> datetime:
    return datetime.now(UTC)


# The zone of an ``occurred_at`` that the event did not carry: UTC, but its own object, so a
# reader tells the time decoding filled in (the moment it was decoded, another at every reading)
# from a time the message named (decoded as ``UTC`` itself or an offset's zone) by identity,
# without parsing the message again (``names_its_time``). Equal to UTC and encoded as ``Z``.
UNSENT_UTC = timezone(timedelta(0), "UTC")


def _now_unsent() -> datetime:
    return datetime.now(UNSENT_UTC)


def names_its_time(event: Event | BatchEvent) -> bool:
    """Whether a decoded ``event``'s message carried its ``occurred_at`` (an event made here
    without one carries the moment it was made, in ``UNSENT_UTC`` too, until it is encoded)."""
    return event.occurred_at.tzinfo is not UNSENT_UTC


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
    """The codes jobrunner writes in a job's ``ErrorInfo`` (README "HTTP API" lists each);
    each comes with a human sentence in ``ErrorInfo.message``.

    Every member is written by a service (a test holds it). ``ErrorInfo.code`` is a ``str``,
    not this enum, because an external worker reports codes of its own: so a member removed
    here (CANCELLED and INTERNAL_ERROR, never written by any version) leaves every stored
    event readable.
    """

    EXIT_NONZERO = "EXIT_NONZERO"
    SPAWN_FAILED = "SPAWN_FAILED"
    PROCESSING_TIMEOUT = "PROCESSING_TIMEOUT"
    RUNNER_LOST = "RUNNER_LOST"
    # Its runner was stopped on purpose (SIGTERM, Ctrl-C) while it ran the job (its tool, or
    # held an external job): not an operator's cancel; start the job again to run it.
    RUNNER_STOPPED = "RUNNER_STOPPED"
    LEASE_LOST = "LEASE_LOST"
    CALLABLE_FAILED = "CALLABLE_FAILED"  # an internal job's callable raised
    # The runner has no such job type (its job types file differs from the API's).
    UNKNOWN_JOB_TYPE = "UNKNOWN_JOB_TYPE"
    # The runner's job type refuses the job's parameters (its job types file differs from the
    # API's: a choice taken away, a parameter made required).
    INVALID_PARAMETERS = "INVALID_PARAMETERS"
    # A job of a batch whose submission never completed (no BatchSealed in time); it never ran.
    BATCH_INCOMPLETE = "BATCH_INCOMPLETE"
    # A file the job left in its output directory was over a size limit and not stored (the
    # job's log names it); a job that would otherwise have completed ends failed with this.
    ARTIFACT_TOO_LARGE = "ARTIFACT_TOO_LARGE"
    # NATS refused to store an output file for good (the bucket full, a permission).
    ARTIFACT_NOT_STORED = "ARTIFACT_NOT_STORED"
    # NATS did not store the tool's output in time after its exit (the drain's bound and the
    # most time waiting for NATS may add to it ran out): its last lines are missing; a job that
    # would otherwise have completed ends failed with this.
    OUTPUT_NOT_STORED = "OUTPUT_NOT_STORED"


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries. ``event_id`` is sent as ``Nats-Msg-Id``."""

    job_id: str
    event_id: str = msgspec.field(default_factory=new_event_id)
    occurred_at: datetime = msgspec.field(default_factory=_now_unsent)
    version: int = 1


# Webhooks (README "Webhooks"): what a request may name, bounded so an event stays small.
MAX_WEBHOOK_URL_CHARS = 2048
MAX_WEBHOOK_HEADERS = 20
MAX_WEBHOOK_HEADER_CHARS = 4096  # one header's name plus value


class WebhookTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where to POST the job's outcome once it ends. The API has checked the URL's form (http or
    https, no user info, bounded); whether its address may be reached is decided at delivery.
    ``headers`` travel in the event as the client gave them (an ``Authorization`` for the
    receiver, say): the stream's readers can see them."""

    url: str
    headers: dict[str, str] = {}


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
    # Who ran this attempt again (None for a first attempt). ``requested_by`` stays the first
    # attempt's owner, so a job restarted by an admin stays visible to the user who submitted it.
    restarted_by: str | None = None
    # An external job (done by a worker elsewhere, reported over HTTP): the SHA-256 (hex) of its
    # callback token. The token itself is shown once, in the API's answer, and stored nowhere.
    callback_token_hash: str | None = None
    # Delivered by the notifier when the job ends, before the job type's own webhooks.
    webhook: WebhookTarget | None = None


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
    # The external worker's report that ended the job (its ``report_id``), so a retried final
    # report is told it was stored rather than that the job had already ended.
    report_id: str | None = None


# The line events are out of the cycle collector's sight (``gc=False``: they refer to no object
# that could refer back): a service that holds many (the API's inboxes while it is behind, a
# runner's or projector's batches) would otherwise have them walked at every collection, about
# a fifth of the API's CPU when it fans lines out.
class LogLine(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One line of output. ``seq`` counts from 1 per job, across stdout and stderr."""

    seq: int
    stream: str  # "stdout" | "stderr"
    level: str  # DEBUG | INFO | SUCCESS | WARNING | ERROR
    timestamp: datetime
    text: LineText


class LineLogged(Event, frozen=True, kw_only=True, tag="LineLogged", gc=False):
    """One or more consecutive output lines of a job (batched on the wire for throughput)."""

    lines: list[LogLine]


class ProgressReported(Event, frozen=True, kw_only=True, tag="ProgressReported"):
    """The tool reported how far it is (from ``[i/N]`` lines or the progress protocol)."""

    current: Count | None = None
    total: Count | None = None
    percent: Percent | None = None
    phase: Phase | None = None
    message: Message | None = None


class WebhookOutcome(StrEnum):
    RETRYING = "retrying"  # this attempt failed, another follows
    DELIVERED = "delivered"  # the receiver answered 2xx: final
    FAILED = "failed"  # given up (retry window over, or an error no retry can fix): final

    @property
    def is_final(self) -> bool:
        return self is not WebhookOutcome.RETRYING


class WebhookAttempted(Event, frozen=True, kw_only=True, tag="WebhookAttempted"):
    """The notifier tried to deliver one of the job's webhooks.

    ``delivery_id`` is the same for every attempt of one webhook of one job (also after a
    notifier restart): receivers de-duplicate on it. ``webhook_index`` is the webhook's place: 0
    is the request's own webhook when it named one, then the job type's in their order. ``url``
    never carries a query or user info (they may hold secrets); header values never appear.
    """

    delivery_id: str
    webhook_index: Count = 0
    url: str
    attempt: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)] = 1
    outcome: WebhookOutcome
    status_code: int | None = None
    error: ErrorInfo | None = None
    duration_ms: float | None = None
    # When the first attempt of this webhook was made: the retry window runs from there.
    first_attempt_at: datetime | None = None


# An artifact's name: a relative path inside the job's output directory, ``/``-separated, no
# ``.``/``..`` part, no backslash, no control characters (common/artifactnames.py checks it).
MAX_ARTIFACT_NAME_CHARS = 1024
ArtifactName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ARTIFACT_NAME_CHARS, pattern=_NO_CONTROL)
]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]


class ArtifactStored(Event, frozen=True, kw_only=True, tag="ArtifactStored"):
    """A file of the job is stored in the artifacts object store, under ``object_name``
    (``<job_id>/<name>``); published before the job's terminal StatusChanged."""

    name: ArtifactName
    size: Annotated[int, msgspec.Meta(ge=0)]
    content_type: str = "application/octet-stream"
    sha256: Sha256Hex
    object_name: str


class BatchEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every batch event carries (on the batch's own subjects, see ``names``)."""

    batch_id: str
    event_id: str = msgspec.field(default_factory=new_event_id)
    occurred_at: datetime = msgspec.field(default_factory=_now_unsent)
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
    JobRequested
    | JobArchived
    | CancelRequested
    | StatusChanged
    | LineLogged
    | ProgressReported
    | WebhookAttempted
    | ArtifactStored
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
    WebhookAttempted,
    ArtifactStored,
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
