"""Projections: pure functions from one event to the row changes it makes."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, JobStatus
from jobrunner.services.projector import projections, storable
from jobrunner.services.projector.projections import (
    WEBHOOK_COLUMNS,
    BatchChanged,
    JobCreated,
    JobUpdated,
    LinesAppended,
    WebhookAttemptRecorded,
    project,
)

AT = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def test_requested_job_is_created_pending() -> None:
    """A requested job appears as pending, with its parameters, lock and requester."""
    event = events.JobRequested(
        job_id="j1",
        job_type="scraper",
        parameters={"plz": "10"},
        lock="datev",
        requested_by="alice",
        occurred_at=AT,
    )
    [change] = project(event, 7)
    assert isinstance(change, JobCreated)
    assert change.row == {
        "id": "j1",
        "job_type": "scraper",
        "status": "pending",
        "parameters": {"plz": "10"},
        "lock": "datev",
        "requested_by": "alice",
        "batch_id": None,
        "batch_index": None,
        "attempt": 1,
        "attempt_of": None,
        "created_at": AT,
        "updated_at": AT,
        "first_seq": 7,
        "last_seq": 7,
    }


def test_running_only_starts_a_pending_job() -> None:
    """A late 'running' never revives a job that already ended."""
    event = events.StatusChanged(
        job_id="j1", status=JobStatus.RUNNING, runner_id="r1", occurred_at=AT
    )
    assert project(event, 8) == [
        JobUpdated(
            "j1",
            {"status": "running", "updated_at": AT, "started_at": AT, "runner_id": "r1"},
            8,
            only_if_status=frozenset({"pending"}),
        )
    ]


def test_failed_job_records_its_error_result_and_exit_code() -> None:
    """A failed job shows when it ended, its exit code, error code and message, and its result."""
    event = events.StatusChanged(
        job_id="j1",
        status=JobStatus.FAILED,
        exit_code=2,
        error=ErrorInfo(code="EXIT_NONZERO", message="The tool exited with 2."),
        result={"found": 3},
        occurred_at=AT,
    )
    [change] = project(event, 9)
    assert isinstance(change, JobUpdated)
    assert change.fields == {
        "status": "failed",
        "updated_at": AT,
        "finished_at": AT,
        "exit_code": 2,
        "error_code": "EXIT_NONZERO",
        "error_message": "The tool exited with 2.",
        "result": {"found": 3},
    }
    assert change.only_if_active


def test_cancelled_job_records_who_cancelled() -> None:
    """A cancelled job shows who cancelled it."""
    event = events.StatusChanged(
        job_id="j1", status=JobStatus.CANCELLED, cancelled_by="bob", occurred_at=AT
    )
    [change] = project(event, 9)
    assert isinstance(change, JobUpdated)
    assert change.fields["cancelled_by"] == "bob"
    assert change.fields["exit_code"] is None


def test_cancel_request_is_recorded_on_the_job() -> None:
    """A cancel request shows on the job (who and when) before the job ends."""
    event = events.CancelRequested(job_id="j1", requested_by="bob", occurred_at=AT)
    assert project(event, 10) == [
        JobUpdated("j1", {"cancel_requested_at": AT, "cancelled_by": "bob", "updated_at": AT}, 10)
    ]


def test_each_logged_line_becomes_a_row_with_the_stream_sequence() -> None:
    """Every line of a batch is one row with the job, its seq and the event's stream sequence."""
    lines = [
        events.LogLine(1, "stdout", "INFO", AT, "one"),
        events.LogLine(2, "stderr", "ERROR", AT, "two"),
    ]
    assert project(events.LineLogged(job_id="j1", lines=lines), 11) == [
        LinesAppended(
            "j1",
            [
                (1, "stdout", "INFO", AT, "one", "j1", 11),
                (2, "stderr", "ERROR", AT, "two", "j1", 11),
            ],
        )
    ]


def test_progress_sets_only_what_was_reported() -> None:
    """A progress report changes the fields it carries and leaves the others as they were."""
    event = events.ProgressReported(job_id="j1", percent=50.0, phase="enrich", occurred_at=AT)
    [change] = project(event, 12)
    assert isinstance(change, JobUpdated)
    assert change.fields == {"updated_at": AT, "progress_percent": 50.0, "phase": "enrich"}


def test_webhook_attempt_becomes_a_row_of_the_delivery_log() -> None:
    """Each attempt is one row: its delivery, number, outcome, code and error; a status code
    no integer column can hold is stored as none."""
    event = events.WebhookAttempted(
        job_id="j1",
        delivery_id="d1",
        webhook_index=1,
        url="https://h/",
        attempt=3,
        outcome=events.WebhookOutcome.FAILED,
        status_code=2**40,
        error=ErrorInfo(code="WEBHOOK_HTTP_ERROR", message="m"),
        duration_ms=12.5,
        occurred_at=AT,
    )
    [change] = project(event, 9)
    assert isinstance(change, WebhookAttemptRecorded)
    assert dict(zip(WEBHOOK_COLUMNS, change.row, strict=True)) == {
        "job_id": "j1",
        "delivery_id": "d1",
        "attempt": 3,
        "webhook_index": 1,
        "url": "https://h/",
        "outcome": "failed",
        "status_code": None,
        "error_code": "WEBHOOK_HTTP_ERROR",
        "error_message": "m",
        "duration_ms": 12.5,
        "attempted_at": AT,
        "stream_seq": 9,
    }


def test_an_attempt_records_its_batch_place_and_first_attempt() -> None:
    """A restarted job of a batch shows its place in the batch, its attempt and the first one."""
    event = events.JobRequested(
        job_id="j2",
        job_type="scraper",
        batch_id="b1",
        batch_index=4,
        attempt=2,
        attempt_of="j1",
        occurred_at=AT,
    )
    [change] = project(event, 3)
    assert isinstance(change, JobCreated)
    assert (
        change.row["batch_id"],
        change.row["batch_index"],
        change.row["attempt"],
        change.row["attempt_of"],
    ) == ("b1", 4, 2, "j1")


def test_archiving_a_job_applies_even_after_it_ended() -> None:
    """Archiving hides a job whatever its status; unarchiving shows it again."""
    event = events.JobArchived(job_id="j1", archived=False, occurred_at=AT)
    assert project(event, 4) == [
        JobUpdated("j1", {"archived": False, "updated_at": AT}, 4, only_if_active=False)
    ]


def test_batch_requested_creates_the_batch_with_its_sorted_types() -> None:
    """A submitted batch appears with its name, requester, total and distinct job types."""
    event = events.BatchRequested(
        batch_id="b1",
        batch_name="Nightly",
        total_jobs=3,
        job_types=["scraper", "enrich_email", "scraper"],
        requested_by="alice",
        occurred_at=AT,
    )
    assert project(event, 1) == [
        BatchChanged(
            "b1",
            {
                "name": "Nightly",
                "requested_by": "alice",
                "job_types": ["enrich_email", "scraper"],
                "total_jobs": 3,
            },
            1,
            AT,
            requested=True,
        )
    ]


def test_batch_failed_records_reason_and_restart_clears_it() -> None:
    """A failed batch shows why and who; a later restart takes the failure back."""
    failed = events.BatchFailed(batch_id="b1", reason="stop", requested_by="bob", occurred_at=AT)
    restarted = events.BatchRestarted(batch_id="b1", mode="all", occurred_at=AT)
    [fail] = project(failed, 5)
    [restart] = project(restarted, 6)
    assert isinstance(fail, BatchChanged)
    assert isinstance(restart, BatchChanged)
    assert fail.fields == {"failed_reason": "stop", "failed_by": "bob", "failed_at": AT}
    assert restart.fields == {"failed_reason": None, "failed_by": None, "failed_at": None}


def test_sealing_and_archiving_set_their_flags() -> None:
    """A sealed batch says so (with its total); archiving hides it and unarchiving shows it."""
    [sealed] = project(events.BatchSealed(batch_id="b1", total_jobs=2, occurred_at=AT), 7)
    [archived] = project(events.BatchArchived(batch_id="b1", archived=False, occurred_at=AT), 8)
    assert isinstance(sealed, BatchChanged)
    assert isinstance(archived, BatchChanged)
    assert sealed.fields == {"sealed": True, "total_jobs": 2}
    assert archived.fields == {"archived": False}


def test_projection_is_deterministic() -> None:
    """The same event at the same sequence always makes the same changes (replay is identical)."""
    event = events.ProgressReported(job_id="j1", current=1, total=2, occurred_at=AT)
    assert project(event, 5) == project(event, 5)


TEXT = st.text(max_size=20)
EVENTS = st.one_of(
    st.builds(events.JobRequested, job_id=TEXT, job_type=TEXT, lock=st.none() | TEXT),
    st.builds(events.CancelRequested, job_id=TEXT, requested_by=st.none() | TEXT),
    st.builds(
        events.StatusChanged,
        job_id=TEXT,
        status=st.sampled_from(JobStatus),
        exit_code=st.none() | st.integers(),
        error=st.none() | st.builds(ErrorInfo, code=TEXT, message=TEXT),
    ),
    st.builds(
        events.LineLogged,
        job_id=TEXT,
        lines=st.lists(
            st.builds(events.LogLine, st.integers(1), TEXT, TEXT, st.just(AT), TEXT), max_size=5
        ),
    ),
    st.builds(
        events.ProgressReported,
        job_id=TEXT,
        current=st.none() | st.integers(),
        percent=st.none() | st.floats(),
        phase=st.none() | TEXT,
    ),
    st.builds(
        events.WebhookAttempted,
        job_id=TEXT,
        delivery_id=TEXT,
        url=TEXT,
        attempt=st.integers(1, events.MAX_COUNT),
        outcome=st.sampled_from(events.WebhookOutcome),
        status_code=st.none() | st.integers(),
        error=st.none() | st.builds(ErrorInfo, code=TEXT, message=TEXT),
        duration_ms=st.none() | st.floats(),
    ),
)


@settings(deadline=None)
@given(EVENTS, st.integers(1, 2**63))
def test_every_change_belongs_to_the_event_s_job(event: events.Event, seq: int) -> None:
    """Whatever an event holds, it changes only its own job (its id as stored: NUL shown as ␀);
    a batch of n lines makes n rows."""
    changes = project(event, seq)
    assert len(changes) == 1
    [change] = changes
    stored_id = event.job_id.replace("\x00", "\u2400")
    if isinstance(change, JobCreated):
        assert change.row["id"] == stored_id
    elif isinstance(change, WebhookAttemptRecorded):
        assert change.row[0] == stored_id
    else:
        assert change.job_id == stored_id
    if isinstance(event, events.LineLogged):
        assert isinstance(change, LinesAppended)
        assert [row[0] for row in change.rows] == [line.seq for line in event.lines]


LINES = st.lists(
    st.builds(
        events.LogLine,
        seq=st.integers(1, events.MAX_COUNT),
        stream=TEXT,
        level=TEXT,
        timestamp=st.just(AT),
        text=TEXT,
    ),
    min_size=0,
    max_size=5,
)


@settings(deadline=None)
@given(TEXT, LINES, st.integers(1, 2**63))
def test_line_rows_are_each_field_made_storable(
    job_id: str, lines: list[events.LogLine], seq: int
) -> None:
    """A line's row holds exactly its fields made storable, one by one (NUL shown as ␀ in the
    job id, stream, level and text alike), however the fast path for lines computes them."""
    [change] = project(events.LineLogged(job_id=job_id, lines=lines), seq)
    assert isinstance(change, LinesAppended)
    stored = storable.text(job_id)
    assert change.job_id == stored
    assert change.rows == [
        (
            ln.seq,
            storable.text(ln.stream),
            storable.text(ln.level),
            ln.timestamp,
            storable.text(ln.text),
            stored,
            seq,
        )
        for ln in lines
    ]


def test_a_subclass_of_an_event_type_projects_as_its_base() -> None:
    """project() finds a projection by the event's type; a subclass (none exists today) still
    gets its base's, as the chain of class patterns gave it."""

    class Progress(events.ProgressReported, frozen=True, kw_only=True, tag="ProgressSubclass"):
        pass

    class Lines(events.LineLogged, frozen=True, kw_only=True, tag="LinesSubclass"):
        pass

    progress = {"job_id": "j1", "occurred_at": AT, "current": 2, "total": 4}
    assert project(Progress(**progress), 3) == project(events.ProgressReported(**progress), 3)
    line = [events.LogLine(1, "stdout", "INFO", AT, "x")]
    assert project(Lines(job_id="j1", lines=line), 5) == project(
        events.LineLogged(job_id="j1", lines=line), 5
    )


def test_every_event_type_has_its_own_projection() -> None:
    """Each concrete type is found by one look-up (the batch events too, whose projection is
    their base's): none walks its class' bases on every event."""
    assert all(projections._BY_TYPE.get(kind) is not None for kind in events.EVENT_TYPES)


# Text with NUL in most draws, in every field a job request or a status change stores.
NUL_TEXT = st.text(alphabet=st.sampled_from("a\x00\u2400"), max_size=4)
NUL_JSON = st.recursive(
    st.none() | st.integers() | NUL_TEXT,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(NUL_TEXT, inner, max_size=2),
    max_leaves=5,
)
STORED_EVENTS = st.one_of(
    st.builds(
        events.JobRequested,
        job_id=NUL_TEXT,
        job_type=NUL_TEXT,
        parameters=st.dictionaries(NUL_TEXT, NUL_JSON, max_size=3),
        lock=st.none() | NUL_TEXT,
        requested_by=st.none() | NUL_TEXT,
        batch_id=st.none() | NUL_TEXT,
        attempt_of=st.none() | NUL_TEXT,
    ),
    st.builds(
        events.StatusChanged,
        job_id=NUL_TEXT,
        status=st.sampled_from(JobStatus),
        error=st.none() | st.builds(ErrorInfo, code=NUL_TEXT, message=NUL_TEXT),
        runner_id=st.none() | NUL_TEXT,
        cancelled_by=st.none() | NUL_TEXT,
        result=st.none() | st.dictionaries(NUL_TEXT, NUL_JSON, max_size=3),
    ),
)


def _strings(value: object) -> list[str]:
    """Every string in a change: its fields', its rows', JSON keys and values at any depth."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings(item)]
    if hasattr(value, "__struct_fields__"):
        return _strings([getattr(value, name) for name in value.__struct_fields__])
    return []


@settings(deadline=None)
@given(STORED_EVENTS, st.integers(1, 2**63))
def test_no_string_a_job_request_or_status_change_stores_holds_nul(
    event: events.JobRequested | events.StatusChanged, seq: int
) -> None:
    """A job's row never gets a NUL from its request or its status changes (Postgres could not
    store it): each string, JSON keys and values at any depth too, shows ␀ instead."""
    [change] = project(event, seq)
    assert not [s for s in _strings(change) if "\x00" in s]


OTHER_STORED_EVENTS = st.one_of(
    st.builds(
        events.ProgressReported,
        job_id=NUL_TEXT,
        current=st.none() | st.integers(0, 2**40),
        percent=st.none() | st.floats(allow_nan=True),
        phase=st.none() | NUL_TEXT,
        message=st.none() | NUL_TEXT,
    ),
    st.builds(events.CancelRequested, job_id=NUL_TEXT, requested_by=st.none() | NUL_TEXT),
    st.builds(
        events.WebhookAttempted,
        job_id=NUL_TEXT,
        delivery_id=NUL_TEXT,
        url=NUL_TEXT,
        outcome=st.sampled_from(events.WebhookOutcome),
        error=st.none() | st.builds(ErrorInfo, code=NUL_TEXT, message=NUL_TEXT),
    ),
)


@settings(deadline=None)
@given(OTHER_STORED_EVENTS, st.integers(1, 2**63))
def test_no_string_a_progress_report_cancel_or_webhook_attempt_stores_holds_nul(
    event: events.ProgressReported | events.CancelRequested | events.WebhookAttempted, seq: int
) -> None:
    """A job's row and its webhook log never get a NUL from a progress report, a cancel request
    or a delivery attempt: each string shows ␀ instead."""
    changes = project(event, seq)
    assert not [s for s in _strings(changes) if "\x00" in s]


@settings(deadline=None)
@given(
    st.none() | st.integers(),
    st.none() | st.integers(),
    st.none() | st.floats(allow_nan=True),
    st.none() | st.integers(),
)
def test_counts_percentages_and_exit_codes_are_stored_as_the_columns_can_hold_them(
    current: int | None, total: int | None, percent: float | None, exit_code: int | None
) -> None:
    """Any progress count is clamped to the integer column, a percentage kept within 0-100
    (none for NaN), an exit code beyond the column shown as none: as ``storable`` says."""
    report = events.ProgressReported(
        job_id="j1", occurred_at=AT, current=current, total=total, percent=percent
    )
    [progress] = project(report, 1)
    assert isinstance(progress, JobUpdated)
    expected = {
        "progress_current": None if current is None else storable.clamp_int4(current),
        "progress_total": None if total is None else storable.clamp_int4(total),
        "progress_percent": None if percent is None else storable.percent(percent),
    }
    assert {name: progress.fields.get(name) for name in expected} == expected
    ended = events.StatusChanged(
        job_id="j1", occurred_at=AT, status=JobStatus.FAILED, exit_code=exit_code
    )
    [end] = project(ended, 2)
    assert isinstance(end, JobUpdated)
    assert end.fields["exit_code"] == storable.int4_or_none(exit_code)
