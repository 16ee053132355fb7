"""External jobs: done by a worker elsewhere, reported over HTTP with the job's callback token,
held under the job's lock by a runner, and shown like any job."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.contracts.names import Names
from jobrunner.services.projector.replay import replay
from jobrunner.services.runner.output import LineSplitter
from tests.external_support import (
    EXTERNAL_TYPES,
    ExternalJob,
    json_values,
    report_like,
    start_external,
    worker_client,
)
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.dedup_window import shrink_window, window_passed
from tests.tools.runners import REPO, lines_of, start_job, wait_status
from tests.tools.status_history import statuses

WORKER = str(REPO / "examples" / "external_worker.py")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES)


async def test_external_job_runs_from_first_report_to_its_result(system: System) -> None:
    """Created pending with a token, running at the first report, completed with its result."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        assert job.url == f"{system.base_url}/api/external/jobs/{job.id}"
        assert len(job.token) >= 43  # 32 random bytes
        pending = (await client.get(f"/api/jobs/{job.id}")).json()
        first = await job.report_when_held(
            worker,
            progress={"phase": "download", "current": 1, "total": 4, "message": "a.pdf"},
            lines=[{"text": "downloading a.pdf"}, {"text": "slow server", "level": "WARNING"}],
        )
        await wait_status(client, job.id, "running")
        second = await job.report(
            worker, lines=[{"text": "page 1\npage 2", "stream": "stderr"}], progress=75
        )
        final = await job.report(
            worker, result={"pages": 2, "summary": "2 pages"}, lines=[{"text": "done"}]
        )
        done = await wait_status(client, job.id, "completed", "failed", "cancelled")
        lines = await lines_of(client, job.id)
        stream = await read_stream(client, f"/jobs/stream/{job.id}")
    assert pending["status"] == "pending"
    assert first.status_code == 200, first.text
    assert first.json() == {
        "job_id": job.id,
        "status": "running",
        "first_seq": 1,
        "last_seq": 2,
        "duplicate": False,
    }
    assert second.json()["first_seq"] == 3
    assert final.json()["status"] == "completed"
    assert done["status"] == "completed"
    assert done["result"] == {"pages": 2, "summary": "2 pages"}
    assert done["progress"]["percent"] == 75
    assert [(ln["seq"], ln["text"], ln["level"], ln["stream"]) for ln in lines] == [
        (1, "downloading a.pdf", "INFO", "stdout"),
        (2, "slow server", "WARNING", "stdout"),
        (3, "page 1", "INFO", "stderr"),
        (4, "page 2", "INFO", "stderr"),
        (5, "done", "INFO", "stdout"),
    ]
    assert [e.json["status"] for e in stream.events if e.event == "status"] == [
        "running",
        "completed",
    ]
    assert any(e.event == "progress" for e in stream.events)


async def test_worker_error_fails_the_job_with_its_code(system: System) -> None:
    """An error report ends the job failed with the worker's code and message."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        response = await job.report_when_held(
            worker, error={"code": "UNSUPPORTED_FILE", "message": "not a PDF"}
        )
        done = await wait_status(client, job.id, "failed", "completed", "cancelled")
    assert response.json()["status"] == "failed"
    assert done["error"] == {"code": "UNSUPPORTED_FILE", "message": "not a PDF"}


async def test_a_line_level_that_does_not_exist_is_refused_naming_the_levels(
    system: System,
) -> None:
    """A worker's line with `"level": "LOUD"` is told which levels there are, at which line."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        response = await job.report(worker, lines=[{"text": "a"}, {"text": "b", "level": "LOUD"}])
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "`$.lines[1].level`" in message
    assert message.endswith("; choose one of DEBUG, ERROR, INFO, SUCCESS, WARNING.")


async def test_token_of_another_job_is_refused_like_an_unknown_job(system: System) -> None:
    """Job B's token on job A's address, and any token on a job that does not exist, get the
    same 401: nothing tells which jobs exist."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        a = await start_external(client)
        b = await start_external(client)
        wrong = await a.report(worker, token=b.token)
        unknown = await worker.post(
            "/api/external/jobs/does-not-exist",
            json={},
            headers={"Authorization": f"Bearer {a.token}"},
        )
        nothing = await worker.post(a.path, json={})
        job = (await client.get(f"/api/jobs/{a.id}")).json()
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "INVALID_CALLBACK_TOKEN"
    assert nothing.status_code == 401
    assert nothing.json()["error"]["code"] == "CALLBACK_TOKEN_REQUIRED"
    assert job["status"] == "pending"


async def test_callback_token_opens_no_other_route(system: System) -> None:
    """A callback token cannot read the job, list jobs or start one."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        auth = {"Authorization": f"Bearer {job.token}"}
        answers = [
            await worker.get(f"/api/jobs/{job.id}", headers=auth),
            await worker.get("/api/jobs", headers=auth),
            await worker.get(f"/api/jobs/{job.id}/logs", headers=auth),
            await worker.post("/api/jobs", json={"job_type": "document"}, headers=auth),
            await worker.post(f"/api/jobs/{job.id}/cancel", json={}, headers=auth),
        ]
    assert [a.status_code for a in answers] == [401] * 5


async def test_api_token_does_not_open_the_reporting_endpoint(system: System) -> None:
    """Not even an admin's API token (or session) is a callback token."""
    async with system.client() as client:
        job = await start_external(client)
        with_api_token = await client.post(job.path, json={})
        cookie = await system.session_cookie()
    async with worker_client(system.base_url) as browser:
        browser.cookies.set("jobrunner_session", cookie)
        with_session = await browser.post(job.path, json={})
    assert with_api_token.status_code == 401
    assert with_api_token.json()["error"]["code"] == "INVALID_CALLBACK_TOKEN"
    assert with_session.status_code == 401


async def test_report_after_the_end_is_refused(system: System) -> None:
    """Once the job ended, its token is dead: 409 JOB_FINISHED naming how it ended."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await job.report_when_held(worker, result={"ok": True})
        await wait_status(client, job.id, "completed")
        late = await job.report(worker, lines=[{"text": "too late"}])
        lines = await lines_of(client, job.id)
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "JOB_FINISHED"
    assert late.json()["error"]["status"] == "completed"
    assert lines == []


async def test_same_report_id_twice_is_stored_once(system: System) -> None:
    """A retried report (same report_id) stores its lines and progress once."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        body = {"report_id": "r-1", "lines": [{"text": "one"}, {"text": "two"}], "progress": 10}
        first = await job.report_when_held(worker, **body)
        again = await job.report(worker, **body)
        after = await job.report(worker, report_id="r-2", lines=[{"text": "three"}])
        events = (await client.get(f"/api/jobs/{job.id}/events")).json()["items"]
        await job.report(worker, report_id="r-3", result={})
        await wait_status(client, job.id, "completed")
        lines = await lines_of(client, job.id)
    assert first.json()["duplicate"] is False
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert after.json()["first_seq"] == 3
    assert [ln["text"] for ln in lines] == ["one", "two", "three"]
    assert [e["event"]["type"] for e in events].count("ProgressReported") == 1


async def test_retried_final_report_is_told_it_was_stored(system: System) -> None:
    """The final report sent again with its report_id answers 200 duplicate, not 409."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        first = await job.report_when_held(worker, report_id="end", result={"n": 1})
        again = await job.report(worker, report_id="end", result={"n": 1})
        other = await job.report(worker, report_id="other", result={"n": 2})
    assert first.json()["status"] == again.json()["status"] == "completed"
    assert again.json()["duplicate"] is True
    assert other.status_code == 409


async def test_concurrent_reports_number_lines_without_gaps(system: System) -> None:
    """Twenty reports of one job at once: every line stored once, numbered 1..n."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await job.report_when_held(worker)
        answers = await asyncio.gather(
            *(
                job.report(worker, lines=[{"text": f"r{r} l{i}"} for i in range(5)])
                for r in range(20)
            )
        )
        await job.report(worker, result={})
        await wait_status(client, job.id, "completed")
        lines = await lines_of(client, job.id)
    assert {a.status_code for a in answers} == {200}
    assert [ln["seq"] for ln in lines] == list(range(1, 101))
    assert sorted(ln["text"] for ln in lines) == sorted(
        f"r{r} l{i}" for r in range(20) for i in range(5)
    )
    for answer in answers:  # each report's lines are consecutive
        body = answer.json()
        assert body["last_seq"] - body["first_seq"] == 4


async def test_cancel_ends_the_job_and_the_next_report_is_told(system: System) -> None:
    """A cancelled external job ends cancelled; the worker's next report gets 409 JOB_FINISHED."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await job.report_when_held(worker, lines=[{"text": "working"}])
        await wait_status(client, job.id, "running")
        await client.post(f"/api/jobs/{job.id}/cancel", json={})
        done = await wait_status(client, job.id, "cancelled", "failed", "completed")
        next_report = await job.report(worker, progress=50)
    assert done["status"] == "cancelled"
    assert next_report.status_code == 409
    assert next_report.json()["error"]["code"] == "JOB_FINISHED"


async def test_cancelled_before_its_first_report(system: System) -> None:
    """An external job cancelled before its worker reported never runs; the worker is told."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await client.delete(f"/api/jobs/{job.id}")
        done = await wait_status(client, job.id, "cancelled", "failed", "completed")
        report = await job.report(worker, lines=[{"text": "hello"}])
    assert done["status"] == "cancelled"
    assert done["started_at"] is None
    assert report.status_code == 409
    assert report.json()["error"]["code"] == "JOB_FINISHED"


async def test_first_report_waits_while_another_job_holds_the_lock(system: System) -> None:
    """A queued external job answers 409 JOB_WAITING (with Retry-After) until it has its lock."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        holder = await start_external(client, "locked")
        await holder.report_when_held(worker)
        queued = await start_external(client, "locked")
        waiting = await queued.report(worker, lines=[{"text": "early"}])
        await holder.report(worker, result={})
        accepted = await queued.report_when_held(worker, lines=[{"text": "my turn"}])
        await queued.report(worker, result={})
        await wait_status(client, queued.id, "completed")
        lines = await lines_of(client, queued.id)
    assert waiting.status_code == 409
    assert waiting.json()["error"]["code"] == "JOB_WAITING"
    assert waiting.headers["retry-after"] == "2"
    assert accepted.status_code == 200
    assert [ln["text"] for ln in lines] == ["my turn"]


async def test_lock_is_held_while_the_external_job_runs(system: System) -> None:
    """A tool sharing the lock starts only once the external job ended."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        external = await start_external(client, "locked")
        await external.report_when_held(worker, lines=[{"text": "holding"}])
        tool = await start_job(client, "locked_tool")
        for _ in range(3):  # the external job keeps reporting; the tool keeps waiting
            await external.report(worker, progress=10)
            assert (await client.get(f"/api/jobs/{tool}")).json()["status"] == "pending"
            await asyncio.sleep(0.3)
        await external.report(worker, result={})
        ended = await wait_status(client, external.id, "completed")
        ran = await wait_status(client, tool, "completed", "failed")
    assert ran["status"] == "completed"
    assert ran["started_at"] >= ended["finished_at"]


async def test_silent_worker_fails_processing_timeout(system: System) -> None:
    """A worker silent for longer than heartbeat_seconds (2 s) fails PROCESSING_TIMEOUT."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, "quiet")
        await job.report_when_held(worker, lines=[{"text": "started"}])
        done = await wait_status(client, job.id, "failed", "completed", "cancelled", timeout=20)
        late = await job.report(worker, result={})
    assert done["error"]["code"] == "PROCESSING_TIMEOUT"
    assert "2 s" in done["error"]["message"]
    assert late.status_code == 409


async def test_worker_reporting_within_the_heartbeat_keeps_its_job(system: System) -> None:
    """Reports 1 s apart (under the 2 s heartbeat) for three heartbeats keep the job running."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, "quiet")
        await job.report_when_held(worker)
        for _ in range(6):
            await asyncio.sleep(1.0)
            answer = await job.report(worker)  # a heartbeat: nothing to store
            assert answer.status_code == 200, answer.text
        final = await job.report(worker, result={"kept": True})
        done = await wait_status(client, job.id, "completed", "failed")
    assert final.status_code == 200
    assert done["status"] == "completed"


async def test_replay_rebuilds_external_jobs_identically(
    system: System, settings: Settings
) -> None:
    """External jobs (lines, progress, a result, an error) replay into identical tables."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await job.report_when_held(worker, lines=[{"text": "a"}], progress={"phase": "x"})
        await job.report(worker, result={"n": 1})
        failed = await start_external(client)
        await failed.report_when_held(worker, error={"code": "DOWNLOAD_FAILED"})
        await wait_status(client, job.id, "completed")
        await wait_status(client, failed.id, "failed")
    report = await replay(settings)
    assert report.differences == {}


hostile_bodies = (
    report_like.map(lambda body: msgspec.json.encode(body))
    | json_values.map(lambda body: msgspec.json.encode(body))
    | st.binary(max_size=2000)
)


async def test_hostile_report_bodies_never_get_a_500(system: System) -> None:
    """Generated bodies, with the right token: every answer is 200 or a 4xx with a code."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await job.report_when_held(worker)
    answers: list[int] = []

    def fuzz() -> None:
        headers = {"Authorization": f"Bearer {job.token}", "Content-Type": "application/json"}
        with httpx.Client(base_url=system.base_url, headers=headers, timeout=30) as http:

            @hypothesis_settings(
                max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            )
            @given(body=hostile_bodies)
            def check(body: bytes) -> None:
                response = http.post(job.path, content=body)
                answers.append(response.status_code)
                assert response.status_code in (200, 400, 409, 413, 422), response.text
                if response.status_code != 200:
                    assert response.json()["error"]["code"]

            check()

    # The server runs in this event loop: the blocking client runs in a thread beside it.
    await asyncio.to_thread(fuzz)
    assert 200 in answers
    assert 422 in answers


async def run_worker(job_url: str, token: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        WORKER,
        job_url,
        *args,
        env={**os.environ, "JOBRUNNER_CALLBACK_TOKEN": token},
        stderr=asyncio.subprocess.PIPE,
    )


async def test_example_worker_reports_a_job_to_its_end(system: System) -> None:
    """examples/external_worker.py reports progress, lines and a result: the job completes."""
    async with system.client() as client:
        job = await start_external(client)
        worker = await run_worker(job.url, job.token, "--steps", "3", "--pause", "0")
        _, stderr = await asyncio.wait_for(worker.communicate(), 60)
        done = await wait_status(client, job.id, "completed", "failed")
        lines = await lines_of(client, job.id)
    assert worker.returncode == 0, stderr.decode()
    assert done["result"] == {"steps": 3}
    assert done["progress"]["current"] == 3
    assert [ln["text"] for ln in lines] == [
        "step 1 of 3 done",
        "step 2 of 3 done",
        "step 3 of 3 done",
        "all done",
    ]


async def test_example_worker_stops_when_its_job_is_cancelled(system: System) -> None:
    """Cancelled while the example worker works, it stops with exit code 3 and says why."""
    async with system.client() as client:
        job = await start_external(client)
        worker = await run_worker(job.url, job.token, "--steps", "100", "--pause", "0.1")
        await wait_status(client, job.id, "running")
        await client.delete(f"/api/jobs/{job.id}")
        _, stderr = await asyncio.wait_for(worker.communicate(), 60)
    assert worker.returncode == 3
    assert b"stopped" in stderr


async def test_job_pages_say_an_external_job_is_done_elsewhere(system: System) -> None:
    """The running card and the detail page of an external job say it is done elsewhere."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await job.report_when_held(worker, lines=[{"text": "from the worker"}])
        await wait_status(client, job.id, "running")
        english = {"Accept-Language": "en"}
        card = (await client.get("/ui/active", headers=english)).text
        detail = (await client.get(f"/jobs/{job.id}", headers=english)).text
        tool = await start_job(client, "locked_tool")
        await wait_status(client, tool, "pending", "running", "completed", "failed")
        tool_detail = (await client.get(f"/jobs/{tool}", headers=english)).text
    assert "This job is done elsewhere" in card
    assert "Waiting for the external worker" in card
    assert "data-external" in detail
    assert "data-external" not in tool_detail


async def test_oversized_report_is_refused_with_413(system: System) -> None:
    """A report over 256 KiB answers 413 BODY_TOO_LARGE and stores nothing."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await job.report_when_held(worker)
        big = await job.report(worker, lines=[{"text": "x" * 10_000}] * 30)
        # The log is read from the job's finished stream: end the job (its 120 s timeout would
        # end it too, and the test would wait for it), on the connection that sent the 413.
        ended = await job.report(worker, result={})
        await wait_status(client, job.id, "completed")
        lines = await lines_of(client, job.id)
    assert ended.status_code == 200, ended.text
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "BODY_TOO_LARGE"
    assert lines == []


async def test_batch_answers_a_token_per_external_job_and_a_retry_the_same(
    system: System,
) -> None:
    """A batch's 201 lists each external job's token and address; the same submission sent
    again (same Idempotency-Key) answers the same tokens, and they open the jobs' reports."""
    body = {
        "batch_name": "documents",
        "jobs": [{"job_type": "document"}, {"job_type": "locked_tool"}, {"job_type": "document"}],
    }
    headers = {"Idempotency-Key": "batch-external-1"}
    async with system.client() as client, worker_client(system.base_url) as worker:
        first = await client.post("/api/batches", json=body, headers=headers)
        again = await client.post("/api/batches", json=body, headers=headers)
        assert first.status_code == 201, first.text
        created = first.json()
        callbacks = created["callbacks"]
        reports = []
        for callback in callbacks:
            job = ExternalJob(callback)
            reports.append(await job.report_when_held(worker, result={"ok": True}))
        ended = [await wait_status(client, c["job_id"], "completed") for c in callbacks]
    assert [c["batch_index"] for c in callbacks] == [0, 2]
    assert [c["job_id"] for c in callbacks] == [created["job_ids"][0], created["job_ids"][2]]
    assert again.json()["callbacks"] == callbacks
    assert [r.status_code for r in reports] == [200, 200]
    assert [job["status"] for job in ended] == ["completed", "completed"]


async def test_batch_without_external_jobs_has_no_callbacks(system: System) -> None:
    """A batch of tools answers as before: no callbacks field."""
    async with system.client() as client:
        created = await client.post(
            "/api/batches", json={"batch_name": "tools", "jobs": [{"job_type": "locked_tool"}]}
        )
    assert created.status_code == 201, created.text
    assert "callbacks" not in created.json()


async def test_restarted_external_job_gets_a_token_of_its_own(system: System) -> None:
    """A new attempt of an external job answers its own token; the old one stays dead."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        first = await start_external(client)
        await first.report_when_held(worker, error={"code": "DOWNLOAD_FAILED"})
        await wait_status(client, first.id, "failed")
        restarted = await client.post(f"/api/jobs/{first.id}/restart", json={})
        assert restarted.status_code == 201, restarted.text
        attempt = ExternalJob(restarted.json())
        old_token = await attempt.report(worker, token=first.token)
        reported = await attempt.report_when_held(worker, result={"second": True})
        done = await wait_status(client, attempt.id, "completed", "failed")
    assert attempt.url.endswith(f"/api/external/jobs/{attempt.id}")
    assert attempt.token != first.token
    assert old_token.status_code == 401
    assert reported.status_code == 200
    assert done["attempt"] == 2


async def test_batch_pending_gives_new_external_attempts_their_tokens(system: System) -> None:
    """POST /api/batches/{id}/pending answers a token for each new external attempt."""
    body = {"batch_name": "retry", "jobs": [{"job_type": "document"}, {"job_type": "locked_tool"}]}
    async with system.client() as client, worker_client(system.base_url) as worker:
        created = (await client.post("/api/batches", json=body)).json()
        job = ExternalJob(created["callbacks"][0])
        await job.report_when_held(worker, error={"code": "UNSUPPORTED_FILE"})
        await wait_status(client, job.id, "failed")
        await wait_status(client, created["job_ids"][1], "completed")
        pending = await client.post(f"/api/batches/{created['batch_id']}/pending", json={})
        assert pending.status_code == 202, pending.text
        callbacks = pending.json()["callbacks"]
        attempt = ExternalJob(callbacks[0])
        reported = await attempt.report_when_held(worker, result={})
        done = await wait_status(client, attempt.id, "completed", "failed")
    assert pending.json()["attempts"] == [attempt.id]
    assert callbacks[0]["batch_index"] == 0
    assert reported.status_code == 200
    assert done["status"] == "completed"


async def test_an_ending_stored_before_the_first_reports_running_is_not_followed_by_it(
    system: System, js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep's RUNNER_LOST ending stored after the first report read the job's status and
    before its ``running``: ``running`` is refused (conditional on the status subject as the
    report read it), the report is answered 409 JOB_FINISHED, and a final report past the
    duplicate window (shrunk) stores no second ending."""
    names = Names(settings.prefix)
    await shrink_window(js, names, settings)
    original = eventstore.publish_acked
    lost: list[int] = []

    async def publish_acked(
        js_: JetStreamContext, names_: Names, event: Any, expected_last: int | None = None
    ) -> Any:
        running = isinstance(event, events.StatusChanged) and event.status == JobStatus.RUNNING
        if running and not lost:
            ending = events.StatusChanged(
                job_id=event.job_id,
                event_id=events.terminal_event_id(event.job_id),
                status=JobStatus.FAILED,
                error=ErrorInfo(code=ErrorCode.RUNNER_LOST, message="swept"),
            )
            lost.append((await original(js, names, ending, expected_last=0)).seq)
        return await original(js_, names_, event, expected_last)

    monkeypatch.setattr(eventstore, "publish_acked", publish_acked)
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        first = await job.report_when_held(worker, lines=[{"text": "started"}])
        await window_passed(js, names)
        final = await job.report(worker, result={"pages": 1})
        done = await wait_status(client, job.id, "failed", "completed", "cancelled")
    assert lost, "the ending was not stored before running"
    assert first.status_code == 409, first.text
    assert first.json()["error"]["code"] == "JOB_FINISHED"
    assert final.status_code == 409, final.text
    assert done["error"]["code"] == "RUNNER_LOST"
    assert await statuses(js, names, job.id) == ["failed"]


async def test_a_workers_lines_are_stored_as_a_tools_same_output(system: System) -> None:
    """A worker reporting what a tool printed (each kind of escape sequence, 8-bit C1 controls,
    BEL and BS, colour codes, a string never ended, a progress bar) stores, streams and
    downloads the lines a runner stores of that tool: colour codes whole, never ``[31m`` text."""
    tool = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "tests" / "tools" / "hostile.py"),
        "--mode",
        "escape_kinds",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(tool.communicate(), 30)
    printed = out + b"\n\x1b[2K[1/2]\r\x1b[2K\x1b[31m[2/2]\x1b[0m"
    splitter = LineSplitter(system.settings.max_line_bytes)
    as_the_runner_stores = splitter.feed(printed) + splitter.close()
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        report = await job.report_when_held(worker, lines=[{"text": printed.decode()}])
        assert report.status_code == 200, report.text
        await job.report(worker, result={"summary": "done"})
        await wait_status(client, job.id, "completed")
        stored = [ln["text"] for ln in await lines_of(client, job.id)]
        stream = await read_stream(client, f"/jobs/stream/{job.id}")
        download = (await client.get(f"/api/jobs/{job.id}/logs/download")).text
    assert stored == as_the_runner_stores
    assert stored[-2:] == ["last", "\x1b[31m[2/2]\x1b[0m"]
    assert [e.json["text"] for e in stream.events if e.event == "message"] == stored
    assert "bell␇ back␈space" in download
    assert not any(c in download for c in "\x1b\x07\x08\u0085\u009b\u009c\u009d")
