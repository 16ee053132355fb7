"""Rows of the read models turned into what the API answers (``readmodels.job_from_row``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

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
