"""The fold of a batch of projected changes into the statements that store them."""

from __future__ import annotations

from datetime import UTC, datetime

from jobrunner.contracts import events
from jobrunner.services.projector.projections import JobCreated, project
from jobrunner.services.projector.store import fold

AT = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def test_folding_a_batch_again_sees_each_new_job_as_projected() -> None:
    """The store folds a batch a second time when a job it creates turns out to be stored
    already (a redelivered request): that fold must see the request's row as projected, not
    as the first fold left it after the job's later events and lines."""
    requested = project(events.JobRequested(job_id="j1", job_type="scraper", occurred_at=AT), 1)
    batch = [
        (1, requested),
        (2, project(events.StatusChanged(job_id="j1", status=events.JobStatus.RUNNING), 2)),
        (
            3,
            project(
                events.LineLogged(
                    job_id="j1", lines=[events.LogLine(1, "stdout", "INFO", AT, "hi")]
                ),
                3,
            ),
        ),
    ]
    (created,) = requested
    assert isinstance(created, JobCreated)
    as_projected = dict(created.row)

    first = fold(batch, set())
    assert first.created == ["j1"]
    again = fold(batch, {"j1"})

    assert created.row == as_projected
    stored_again = [change for change in again.updates if isinstance(change, JobCreated)]
    assert [change.row for change in stored_again] == [as_projected]
