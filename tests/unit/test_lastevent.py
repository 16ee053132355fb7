"""Which stored message counts as a job's event of a kind: the rest is skipped, never raised."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobrunner.common import lastevent
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import JobStatus

ENDING = events.StatusChanged(job_id="j1", status=JobStatus.COMPLETED)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_body_is_an_event_or_a_reason_never_an_exception(body: bytes) -> None:
    """Whatever bytes a foreign publisher stores, reading them answers, it never raises."""
    found = lastevent.readable(body, events.StatusChanged, "j1")
    assert isinstance(found, events.StatusChanged | str)


def test_the_jobs_own_event_of_the_kind_is_read() -> None:
    """An event jobrunner wrote for this job and subject is the answer."""
    assert lastevent.readable(codec.encode(ENDING), events.StatusChanged, "j1") == ENDING


def test_another_jobs_event_and_another_kind_are_skipped_with_a_reason() -> None:
    """An ending naming another job, or a request on the status subject, is no status of j1."""
    other = events.StatusChanged(job_id="j2", status=JobStatus.COMPLETED)
    request = events.JobRequested(job_id="j1", job_type="t")
    assert "'j2'" in str(lastevent.readable(codec.encode(other), events.StatusChanged, "j1"))
    assert "JobRequested" in str(
        lastevent.readable(codec.encode(request), events.StatusChanged, "j1")
    )
