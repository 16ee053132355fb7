"""Watching everything: GET /api/jobs/stream sends job_update events for every job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.services.api.job_updates import RAW_CATCH_UP_MIN
from tests.history_support import job_events, publish, reading_system, wait_projected
from tests.sse_client import iter_events, read_stream
from tests.system import System


def progressing_job(job_id: str, minute: int) -> list[events.Event]:
    """Requested, running, three lines, two progress reports, completed."""
    requested, running, lines, done = job_events(
        job_id, "scraper", minute, JobStatus.COMPLETED, lines=["a", "b", "c"]
    )
    return [
        requested,
        running,
        lines,
        events.ProgressReported(job_id=job_id, current=1, total=4, phase="scan", message="1/4"),
        lines,  # a repeated batch (de-duplicated by its event id) must not matter
        events.ProgressReported(job_id=job_id, percent=50.0, message="halfway"),
        done,
    ]


@pytest.fixture
async def watched(settings: Settings) -> AsyncIterator[System]:
    last = await publish(settings, progressing_job("a", 0) + progressing_job("b", 1))
    async with reading_system(settings) as system:
        await wait_projected(settings, last)
        yield system


async def test_updates_carry_the_side_panel_fields(watched: System) -> None:
    """Each change of a job is one job_update with jobId, status, phase, progress, message."""
    async with watched.client() as client:
        stream = await read_stream(client, "/api/jobs/stream?after=0", stop_after=10)
    updates = [e.json for e in stream.events]
    assert {e.event for e in stream.events} == {"job_update"}
    a = [u for u in updates if u["jobId"] == "a"]
    assert [(u["status"], u["phase"], u["progress"], u["message"]) for u in a] == [
        ("pending", None, None, None),
        ("running", None, None, None),
        ("running", "scan", 25.0, "1/4"),
        ("running", "scan", 50.0, "halfway"),
        ("completed", "scan", 100.0, "halfway"),
    ]
    assert a[0]["type"] == "job_update"
    assert a[0]["jobType"] == "scraper"
    assert a[0]["updatedAt"].startswith("2026-01-01T00:00:00")


async def test_updates_skip_log_lines(watched: System) -> None:
    """Log line batches never become job_update events; ids are the events' stream sequences."""
    async with watched.client() as client:
        stream = await read_stream(client, "/api/jobs/stream?after=0", stop_after=10)
    ids = [int(e.id) for e in stream.events]
    assert ids == sorted(ids)
    # Each job published 7 events: 2 are lines (one a duplicate JetStream dropped).
    assert ids == [1, 2, 4, 5, 6, 7, 8, 10, 11, 12]


async def test_resume_with_last_event_id_continues_exactly(watched: System) -> None:
    """Reconnecting with Last-Event-ID yields every later update once and none before."""
    async with watched.client() as client:
        full = await read_stream(client, "/api/jobs/stream?after=0", stop_after=10)
        first = await read_stream(client, "/api/jobs/stream?after=0", stop_after=4)
        rest = await read_stream(
            client, "/api/jobs/stream", last_event_id=first.events[-1].id, stop_after=6
        )
    assert [e.id for e in first.events + rest.events] == [e.id for e in full.events]
    assert [e.json for e in rest.events] != []


async def test_a_new_stream_starts_after_what_the_list_shows(
    watched: System, settings: Settings
) -> None:
    """Without Last-Event-ID or after, the stream starts with changes the list did not show yet."""
    async with (
        watched.client() as client,
        client.stream("GET", "/api/jobs/stream") as response,
    ):
        # The start is fixed once the response has begun; publish only then.
        assert response.status_code == 200
        seq = await publish(settings, job_events("c", minute=5))
        await wait_projected(settings, seq)
        async with asyncio.timeout(30):
            first = await anext(iter_events(response))
    assert first.json["jobId"] == "c"
    assert first.json["status"] == "pending"


async def test_a_cancel_seen_first_shows_the_jobs_real_status(
    watched: System, settings: Settings
) -> None:
    """A stream that starts after a job was requested (a dashboard opened later, an API
    restart) and first sees its cancel request shows the status the job has: pending."""
    requested = await publish(settings, job_events("p", "enrich_email", minute=7))
    cancel = await publish(settings, [events.CancelRequested(job_id="p", requested_by="ops")])
    await wait_projected(settings, cancel)
    async with watched.client() as client:
        stream = await read_stream(client, f"/api/jobs/stream?after={requested}", stop_after=1)
    update = stream.events[0].json
    assert (update["jobId"], update["status"], update["cancelRequested"]) == ("p", "pending", True)
    assert update["jobType"] == "enrich_email"


async def test_progress_seen_first_keeps_what_the_list_shows(
    watched: System, settings: Settings
) -> None:
    """A progress report seen first carries the job's status, type and earlier progress."""
    scan = events.ProgressReported(job_id="r", current=1, total=4, phase="scan")
    await publish(settings, [*job_events("r", minute=8, status=JobStatus.RUNNING), scan])
    halfway = events.ProgressReported(job_id="r", percent=50.0, message="halfway")
    seq = await publish(settings, [halfway])
    await wait_projected(settings, seq)
    async with watched.client() as client:
        stream = await read_stream(client, f"/api/jobs/stream?after={seq - 1}", stop_after=1)
    update = stream.events[0].json
    assert (update["jobId"], update["status"], update["jobType"]) == ("r", "running", "scraper")
    assert (update["phase"], update["progress"], update["message"]) == ("scan", 50.0, "halfway")
    assert (update["current"], update["total"]) == (1, 4)


async def test_a_job_not_projected_yet_is_never_shown_running(settings: Settings) -> None:
    """Without the job's earlier events or its read model row, a cancel request or a progress
    report does not make up a "running" status: the job is still pending as far as anyone saw."""
    async with reading_system(settings) as system:
        await system.stop_service("projector")
        requested = await publish(settings, job_events("q") + job_events("s"))
        await publish(
            settings,
            [
                events.CancelRequested(job_id="q"),
                events.ProgressReported(job_id="s", current=3, total=10),
            ],
        )
        async with system.client() as client:
            stream = await read_stream(client, f"/api/jobs/stream?after={requested}", stop_after=2)
    updates = [e.json for e in stream.events]
    assert [(u["jobId"], u["status"]) for u in updates] == [("q", "pending"), ("s", "pending")]
    assert updates[0]["cancelRequested"] is True
    assert updates[1]["progress"] == 30.0


async def opening(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, int]
) -> httpx.Response:
    """The update stream's answer as it opens: its status and, for a refusal, its body."""
    async with client.stream("GET", "/api/jobs/stream", headers=headers, params=params) as response:
        if response.status_code != 200:
            await response.aread()
        return response


async def test_a_resume_point_ahead_of_the_stream_is_refused(watched: System) -> None:
    """A Last-Event-ID or ?after= no stream handed out (another installation's) is a 400, not a
    stream that stays silent until the event stream reaches it (the per-job stream's answer)."""
    async with watched.client() as client:
        info = (await client.get("/api/jobs")).json()
        last = info["projected_seq"]
        # Read as streams: before the fix the refused ones opened and never ended.
        by_id = await opening(client, {"Last-Event-ID": str(last + 1000)}, {})
        by_after = await opening(client, {}, {"after": last + 1000})
        # The last stored event itself is a fine place to resume: the stream opens.
        at_the_end = await opening(client, {"Last-Event-ID": str(last)}, {})
    assert at_the_end.status_code == 200
    assert by_id.status_code == 400
    assert by_id.json()["error"]["code"] == "LAST_EVENT_ID_AHEAD", by_id.text
    assert by_id.json()["error"]["stream_last_seq"] == last
    assert by_after.status_code == 400
    assert by_after.json()["error"]["code"] == "INVALID_QUERY"
    assert by_after.json()["error"]["field"] == "after"


async def test_stream_path_is_not_taken_for_a_job_id(watched: System) -> None:
    """/api/jobs/stream is the update stream, and bad ?after values are a 400."""
    async with watched.client() as client:
        response = await client.get("/api/jobs/stream", params={"after": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "after"


async def test_a_long_backlog_cut_and_resumed_sends_every_update_once(settings: Settings) -> None:
    """A dashboard resuming far back (a backlog long enough for the raw stream reader) gets each
    job's pending, running and completed once, in order, also when it is cut half-way and
    resumes with Last-Event-ID."""
    # Four events a job (requested, running, lines, the end): the whole stream and what is left
    # after the cut are both longer than the raw reader's minimum.
    jobs = RAW_CATCH_UP_MIN // 2
    history = [
        e
        for n in range(jobs)
        for e in job_events(f"long{n}", minute=n, status=JobStatus.COMPLETED, lines=["x"])
    ]
    last = await publish(settings, history)
    async with reading_system(settings) as system:
        await wait_projected(settings, last)
        async with system.client() as client:
            whole = await read_stream(client, "/api/jobs/stream?after=0", stop_after=3 * jobs)
            first = await read_stream(client, "/api/jobs/stream?after=0", stop_after=jobs // 2)
            rest = await read_stream(
                client,
                "/api/jobs/stream",
                last_event_id=first.events[-1].id,
                stop_after=3 * jobs - jobs // 2,
            )
    ids = [int(e.id) for e in whole.events]
    assert ids == sorted(set(ids))
    assert [e.id for e in first.events + rest.events] == [e.id for e in whole.events]
    # The same changes; a job seen first after the cut starts from its read-model row, which may
    # show more than the stream had said by then (its final progress, say).
    assert [(e.json["jobId"], e.json["status"]) for e in first.events + rest.events] == [
        (e.json["jobId"], e.json["status"]) for e in whole.events
    ]
    shown: dict[str, list[str]] = {}
    for e in whole.events:
        shown.setdefault(e.json["jobId"], []).append(e.json["status"])
    assert shown == {f"long{n}": ["pending", "running", "completed"] for n in range(jobs)}
