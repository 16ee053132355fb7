"""Lines stored after their job's end still reach its viewers, before the end.

A runner cut off from NATS publishes what its tool printed meanwhile once it is back; by then
another runner may have ended the job RUNNER_LOST, and the runner itself adds its own end
(LEASE_LOST). The job's stream shows those lines, then the first end, once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobrunner.common import eventstore
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.contracts.names import Names
from tests.batch_submit_support import jetstream
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.runners import wait_status


def lines(job_id: str, first: int, last: int) -> list[events.LineLogged]:
    at = datetime.now(UTC)
    return [
        events.LineLogged(
            job_id=job_id, lines=[events.LogLine(n, "stdout", "INFO", at, f"line {n}")]
        )
        for n in range(first, last + 1)
    ]


def lost(job_id: str, code: str, runner: str) -> events.StatusChanged:
    return events.StatusChanged(
        job_id=job_id,
        status=JobStatus.FAILED,
        runner_id=runner,
        error=ErrorInfo(code=code, message="the runner was lost"),
    )


@pytest.mark.parametrize("before_end", [3, 40], ids=["short-past", "long-past"])
async def test_lines_stored_after_the_end_are_shown_before_it(
    projector_and_api: System, before_end: int
) -> None:
    job_id = f"late-{before_end}"
    history: list[events.Publishable] = [
        events.JobRequested(job_id=job_id, job_type="no-runner-here"),
        events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING, runner_id="a"),
        *lines(job_id, 1, before_end),
        lost(job_id, ErrorCode.RUNNER_LOST, "b"),
        *lines(job_id, before_end + 1, before_end + 5),
        lost(job_id, ErrorCode.LEASE_LOST, "a"),
    ]
    async with jetstream(projector_and_api.settings) as js:
        await eventstore.publish_many(js, Names(projector_and_api.settings.prefix), history)
    async with projector_and_api.client() as client:
        await wait_status(client, job_id, "failed")
        stream = await read_stream(client, f"/jobs/stream/{job_id}")
    shown = [(e.event, e.json.get("seq") or e.json.get("status")) for e in stream.events]
    expected_lines = [("message", n) for n in range(1, before_end + 6)]
    assert [s for s in shown if s[0] == "message"] == expected_lines
    assert shown[-2:] == [("status", "failed"), ("done", "failed")]
    ends = [e.json for e in stream.events if e.event == "done"]
    assert [end["error"]["code"] for end in ends] == ["RUNNER_LOST"]
