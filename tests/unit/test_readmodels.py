"""Rows of the read models turned into what the API answers (``readmodels.job_from_row``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.services.api import readmodels, schemas

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def keyword_job_from_row(row: Any, now: datetime | None = None) -> schemas.Job:
    """The keyword form ``job_from_row`` had before it went positional: the reference."""
    started, finished = row["started_at"], row["finished_at"]
    duration = None
    if started is not None:
        end = finished or now or datetime.now(UTC)
        duration = round((end - started).total_seconds(), 3)
    progress = None
    if any(
        row[c] is not None for c in ("progress_current", "progress_percent", "phase", "message")
    ):
        progress = schemas.Progress(
            current=row["progress_current"],
            total=row["progress_total"],
            percent=row["progress_percent"],
            phase=row["phase"],
            message=row["message"],
        )
    error = (
        schemas.JobError(code=row["error_code"], message=row["error_message"] or "")
        if row["error_code"]
        else None
    )
    return schemas.Job(
        id=row["id"],
        job_type=row["job_type"],
        status=row["status"],
        parameters=row["parameters"],
        created_at=row["created_at"],
        started_at=started,
        finished_at=finished,
        duration_seconds=duration,
        exit_code=row["exit_code"],
        error=error,
        result=row["result"],
        log_count=row["log_count"],
        progress=progress,
        lock=row["lock"],
        requested_by=row["requested_by"],
        cancelled_by=row["cancelled_by"],
        cancel_requested_at=row["cancel_requested_at"],
        updated_at=row["updated_at"],
        batch_id=row["batch_id"],
        batch_index=row["batch_index"],
        attempt=row["attempt"],
        attempt_of=row["attempt_of"],
        latest=row["latest"],
        archived=row["archived"],
    )


instants = st.integers(0, 10**7).map(lambda s: BASE + timedelta(milliseconds=s))
times = st.none() | instants
texts = st.none() | st.text(max_size=8)
ints = st.none() | st.integers(-(2**31), 2**31)
json_objects = st.none() | st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4))

rows = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=12),
        "job_type": st.text(min_size=1, max_size=12),
        "status": st.sampled_from(["pending", "running", "completed", "failed", "cancelled"]),
        "parameters": st.dictionaries(st.text(max_size=4), st.integers()),
        "created_at": instants,
        "started_at": times,
        "finished_at": times,
        "exit_code": ints,
        "error_code": st.none() | st.sampled_from(["", "RUNNER_LOST", "TIMEOUT"]),
        "error_message": texts,
        "result": json_objects,
        "log_count": st.integers(0, 10**6),
        "progress_current": ints,
        "progress_total": ints,
        "progress_percent": st.none() | st.floats(0, 100),
        "phase": texts,
        "message": texts,
        "lock": texts,
        "requested_by": texts,
        "cancelled_by": texts,
        "cancel_requested_at": times,
        "updated_at": instants,
        "first_seq": st.integers(0, 10**6),
        "last_seq": st.integers(0, 10**6),
        "batch_id": texts,
        "batch_index": st.none() | st.integers(0, 10**4),
        "attempt": st.integers(1, 5),
        "attempt_of": texts,
        "latest": st.booleans(),
        "archived": st.booleans(),
    }
)


@settings(deadline=None, max_examples=150)
@given(row=rows, now=times, extra=st.lists(st.integers(), max_size=2))
def test_a_row_gives_the_job_the_keyword_form_gave(
    row: dict[str, Any], now: datetime, extra: list[int]
) -> None:
    """Whatever a job's row holds, the API shows the same job as before the positional form,
    read by name: the row as a query of JOB_COLUMNS returns it (columns a query adds after
    them, such as the list's checkpoint, are left alone)."""
    now = now or BASE
    values = (*(row[name] for name in readmodels.JOB_COLUMN_NAMES), *extra)
    assert readmodels.job_from_row(values, now) == keyword_job_from_row(row, now)


def rounded_seconds(start: datetime, end: datetime) -> bytes:
    """The duration as the API wrote it before ``duration_seconds``, as the JSON it becomes."""
    return msgspec.json.encode(round((end - start).total_seconds(), 3))


spans = st.one_of(
    st.integers(-(10**10), 10**13),  # up to about 116 days, and a little backwards
    # exact half milliseconds, where the seconds' float falls either side of the tie
    st.integers(-(10**9), 10**9).map(lambda ms: ms * 1000 + 500),
    st.integers(2**52 - 10**6, 2**52 + 10**6),  # about 142 years, where the shortcut stops
    st.integers(-999, 999),  # under a millisecond either way: 0.0 and -0.0
)


@settings(deadline=None, max_examples=2000)
@given(start=st.integers(0, 10**13), micros=spans)
def test_a_duration_is_the_rounded_seconds_to_the_byte(start: int, micros: int) -> None:
    """A job's ``duration_seconds`` in the JSON is what ``round(seconds, 3)`` wrote, to the
    byte (``-0.0`` too), whatever the span: the integer shortcut and its fallbacks agree."""
    begin = BASE + timedelta(microseconds=start)
    end = begin + timedelta(microseconds=micros)
    got = msgspec.json.encode(readmodels.duration_seconds(begin, end))
    assert got == rounded_seconds(begin, end)


def test_a_duration_at_a_tie_is_the_rounded_seconds() -> None:
    """At an exact half millisecond the seconds' float lies either side of the tie: 2.5 ms
    rounds up to 0.003, 4.5 ms down to 0.004, 5.5 ms down to 0.005. Neither half up nor half
    to even on the microseconds gives all three (half up: 0.005, 0.006; half to even: 0.002,
    0.006), so every tie goes to ``round``; and a span just under zero is -0.0, as before."""
    for micros, expected in ((2500, b"0.003"), (4500, b"0.004"), (5500, b"0.005"), (-400, b"-0.0")):
        end = BASE + timedelta(microseconds=micros)
        assert msgspec.json.encode(readmodels.duration_seconds(BASE, end)) == expected
        assert rounded_seconds(BASE, end) == expected
