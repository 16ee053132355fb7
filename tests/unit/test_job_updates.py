"""``job_update`` frames: the state a job shows, folded from its events, and its frame's bytes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, JobStatus
from jobrunner.services.api.job_updates import JobState, JobStates, apply, update_frame
from jobrunner.services.api.sse import frame

AT = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def seed_payload(state: JobState) -> dict[str, Any]:
    """The job_update data as the stream first built it, a dict of seed 001's fields and a few
    more: the reference the encoded state must match byte for byte."""
    return {
        "type": "job_update",
        "jobId": state.job_id,
        "jobType": state.job_type,
        "status": state.status,
        "phase": state.phase,
        "progress": state.progress,
        "current": state.current,
        "total": state.total,
        "message": state.message,
        "cancelRequested": state.cancel_requested,
        "updatedAt": state.updated_at,
    }


TEXT = st.text(alphabet=st.sampled_from('ab \n"\\\u0085\u2028\u2029é€\x00\x1b'), max_size=12)
STATES = st.builds(
    JobState,
    job_id=TEXT,
    job_type=st.none() | TEXT,
    status=st.sampled_from([s.value for s in JobStatus]),
    phase=st.none() | TEXT,
    progress=st.none() | st.floats(0, 100),
    current=st.none() | st.integers(0, 2**40),
    total=st.none() | st.integers(0, 2**40),
    message=st.none() | TEXT,
    cancel_requested=st.booleans(),
    updated_at=st.none() | st.datetimes(timezones=st.just(UTC)),
)


@settings(max_examples=300, deadline=None)
@given(state=STATES, seq=st.integers(1, 2**53))
def test_a_job_update_frame_is_byte_for_byte_the_seed_fields_framed(
    state: JobState, seq: int
) -> None:
    """A job_update's frame carries exactly the fields and bytes it always did, line breaks of
    any kind escaped, with the event's stream sequence as its id."""
    expected = frame(seed_payload(state), event="job_update", id=str(seq))
    assert update_frame(seq, state) == expected


def test_progress_then_the_end_shows_each_step_and_leaves_earlier_states_as_they_were() -> None:
    """A job's updates show its progress, then 100 % and the error's sentence at the end; each
    update is a new state, so a frame already built never changes."""
    requested = apply(None, events.JobRequested(job_id="j", job_type="scraper", occurred_at=AT))
    assert requested is not None
    progress = apply(
        requested,
        events.ProgressReported(job_id="j", current=1, total=4, phase="scan", occurred_at=AT),
    )
    assert progress is not None
    failed = apply(
        progress,
        events.StatusChanged(
            job_id="j",
            status=JobStatus.FAILED,
            error=ErrorInfo(code="EXIT_NONZERO", message="exit 2"),
            occurred_at=AT,
        ),
    )
    assert failed is not None
    shown = [
        (s.status, s.job_type, s.phase, s.progress, s.current, s.total, s.message)
        for s in (requested, progress, failed)
    ]
    assert shown == [
        ("pending", "scraper", None, None, None, None, None),
        ("pending", "scraper", "scan", 25.0, 1, 4, None),
        ("failed", "scraper", "scan", 25.0, 1, 4, "exit 2"),
    ]
    assert msgspec.json.decode(update_frame(3, failed).split(b"data: ")[1])["jobType"] == "scraper"


JOB_IDS = st.sampled_from(["a", "b", "c"])
FOLDED_EVENTS = st.one_of(
    st.builds(
        events.JobRequested, job_id=JOB_IDS, job_type=st.just("scraper"), occurred_at=st.just(AT)
    ),
    st.builds(
        events.StatusChanged,
        job_id=JOB_IDS,
        status=st.sampled_from(list(JobStatus)),
        occurred_at=st.just(AT),
    ),
    st.builds(
        events.ProgressReported,
        job_id=JOB_IDS,
        current=st.none() | st.integers(0, 9),
        total=st.none() | st.integers(0, 9),
        occurred_at=st.just(AT),
    ),
    st.builds(events.CancelRequested, job_id=JOB_IDS, occurred_at=st.just(AT)),
)


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(FOLDED_EVENTS, max_size=30),
    in_read_model=st.sets(JOB_IDS),
    size=st.integers(1, 3),
)
def test_a_fold_without_awaits_shows_what_the_awaited_fold_shows(
    stream: list[events.Event], in_read_model: set[str], size: int
) -> None:
    """Jobs known, unknown, forgotten or only in the read model: an update stream shows the same
    states whether each event is folded with an ``await`` or, when no look-up is needed, without."""

    def make() -> tuple[JobStates, list[str]]:
        asked: list[str] = []

        async def lookup(job_id: str) -> JobState | None:
            asked.append(job_id)
            return JobState(job_id=job_id, status="running") if job_id in in_read_model else None

        return JobStates(lookup, size=size), asked

    async def fold() -> tuple[list[JobState | None], list[str], list[JobState | None], list[str]]:
        awaited, awaited_asked = make()
        plain, plain_asked = make()
        before = [await awaited.update(event) for event in stream]
        after = [
            await plain.update(event) if plain.needs_lookup(event) else plain.update_known(event)
            for event in stream
        ]
        return before, awaited_asked, after, plain_asked

    before, asked_before, after, asked_after = asyncio.run(fold())
    assert after == before
    assert asked_after == asked_before
