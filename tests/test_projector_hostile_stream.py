"""A foreign publisher on the job subjects (malformed JSON, bytes that are no text, a schema
version from the future, a huge line, an ending for an unknown job, lines out of order and
twice, an ending before the request): the projector sets aside what it cannot apply, never
stops, shows the jobs published after, and its read models equal a fresh replay of the stream."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from jobrunner.services.projector.feed import NO_TIME
from tests.history_support import BASE_TIME, job_events, publish, publisher, wait_projected
from tests.readmodel_support import replay_differences
from tests.system import System


def lines(job_id: str, *seqs: int, text: str = "") -> events.LineLogged:
    return events.LineLogged(
        job_id=job_id,
        lines=[
            events.LogLine(s, "stdout", "INFO", BASE_TIME + timedelta(seconds=s), text or f"l{s}")
            for s in seqs
        ],
    )


def ending(job_id: str) -> events.StatusChanged:
    return events.StatusChanged(
        job_id=job_id, event_id=events.terminal_event_id(job_id), status=JobStatus.COMPLETED
    )


async def test_a_hostile_stream_never_stops_the_projector_and_equals_a_replay(
    settings: Settings,
) -> None:
    names = Names(settings.prefix)
    system = System(settings)
    await system.start_projector()
    try:
        async with publisher(settings) as js:
            subject = names.job_kind_subject("hostile", "lines")
            for raw in (
                b"{not json",
                b"\xff\xfe\x00",
                b"[]",
                b'{"type": 5}',
                b'{"type": ["JobRequested"]}',
                b'{"type": "JobRequested", "version": 99, "job_id": "future", '
                b'"job_type": "scraper", "parameters": {}, "surprise": [1, 2]}',
                b'{"type": "LineLogged", "job_id": "hostile", "lines": [[1]]}',
            ):
                await js.publish(subject, raw)
        await publish(
            settings,
            [
                ending("ghost"),  # an ending for a job never requested
                lines("ghost2", 1, 2),  # lines of a job never requested
                ending("late"),  # the ending before the request
                *job_events("late"),
                *job_events("ooo", status=JobStatus.RUNNING),
                lines("ooo", 3, 4),
                lines("ooo", 1, 2),
                lines("ooo", 2, 5),  # line 2 again
                lines("huge", 1, text="x" * 900_000),
                *job_events("huge", status=JobStatus.RUNNING),
                # A publisher whose clock is a day ahead: its time is its own, kept.
                events.JobRequested(
                    job_id="ahead",
                    job_type="scraper",
                    parameters={},
                    occurred_at=events.utcnow() + timedelta(days=1),
                ),
            ],
        )
        last = await publish(settings, job_events("after", status=JobStatus.COMPLETED))
        await wait_projected(settings, last, timeout=30)
        assert not system._tasks["projector"].done(), "the projector stopped"
    finally:
        await system.stop()
    conn = await asyncpg.connect(settings.database_url)
    try:
        errors = await conn.fetch(
            "SELECT stream_seq, error FROM readmodel.projector_failures ORDER BY stream_seq"
        )
        jobs = await conn.fetch("SELECT id, status FROM readmodel.jobs ORDER BY id")
    finally:
        await conn.close()
    # The foreign messages but those whose "type" names no event (skipped, as an unknown type
    # is; 4 and 5).
    assert [e["stream_seq"] for e in errors] == [1, 2, 3, 6, 7]
    assert errors[3]["error"] == NO_TIME  # the event without its time
    assert [tuple(j) for j in jobs] == [
        ("after", "completed"),
        ("ahead", "pending"),
        ("huge", "running"),
        ("late", "completed"),
        ("ooo", "running"),
    ]
    assert await replay_differences(settings) == {}
