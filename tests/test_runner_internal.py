"""Internal jobs: a Python callable run inside the runner, with the same events, cancel and
timeout as a tool."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import DEFAULT_JOB_TYPES, Settings
from jobrunner.services.runner.output import SPLIT_MARKER
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, lines_of, start_job, wait_status


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


async def test_internal_job_streams_lines_progress_and_result(system: System) -> None:
    """A callable's log lines, progress and returned dict arrive like a tool's."""
    async with system.client() as client:
        job_id = await start_job(client, "internal_counts", lines=4)
        job = await wait_status(client, job_id, "completed", "failed")
        stream = await read_stream(client, f"/jobs/stream/{job_id}")
    lines = [e.json for e in stream.events if e.event == "message"]
    assert [ln["text"] for ln in lines] == [f"[{i}/4] item {i}" for i in range(1, 5)] + [
        "all counted"
    ]
    assert lines[-1]["level"] == "SUCCESS"
    assert [e.json["status"] for e in stream.events if e.event == "status"] == [
        "running",
        "completed",
    ]
    assert any(e.event == "progress" for e in stream.events)
    assert job["progress"]["current"] == 4
    assert job["progress"]["phase"] == "counting"
    assert job["result"] == {"summary": "4 counted", "counted": 4}
    assert job["exit_code"] is None


async def test_internal_job_is_cancelled(system: System) -> None:
    """Cancelling a running internal job ends it as cancelled."""
    async with system.client() as client:
        job_id = await start_job(client, "internal_forever")
        await wait_status(client, job_id, "running")
        await client.delete(f"/api/jobs/{job_id}")
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    assert job["status"] == "cancelled"


async def test_internal_job_times_out(system: System) -> None:
    """An internal job past its timeout fails with PROCESSING_TIMEOUT."""
    async with system.client() as client:
        job_id = await start_job(client, "internal_timeout")
        job = await wait_status(client, job_id, "failed", "completed", "cancelled")
        lines = await lines_of(client, job_id)
    assert job["error"]["code"] == "PROCESSING_TIMEOUT"
    assert [ln["text"] for ln in lines] == ["ignoring cancel", "cancelled at last"]


async def test_blocking_internal_job_sees_the_cancel_request(system: System) -> None:
    """A plain (threaded) callable checks ctx.cancel_requested and stops when cancelled."""
    async with system.client() as client:
        job_id = await start_job(client, "internal_blocking")
        await wait_status(client, job_id, "running")
        await client.delete(f"/api/jobs/{job_id}")
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
        lines = await lines_of(client, job_id)
    assert job["status"] == "cancelled"
    assert [ln["text"] for ln in lines] == ["in a thread", "stopping as asked"]


async def test_internal_job_that_raises_fails_with_the_exception(system: System) -> None:
    """A callable raising ValueError: failed, CALLABLE_FAILED, and the exception in the message."""
    async with system.client() as client:
        job_id = await start_job(client, "internal_raises")
        job = await wait_status(client, job_id, "failed", "completed")
    assert job["error"]["code"] == "CALLABLE_FAILED"
    assert "ValueError: spreadsheet is locked" in job["error"]["message"]


async def test_internal_job_whose_callable_is_missing_fails_to_spawn(system: System) -> None:
    """A callable that cannot be imported: failed, SPAWN_FAILED, naming it."""
    async with system.client() as client:
        job_id = await start_job(client, "internal_missing")
        job = await wait_status(client, job_id, "failed", "completed")
    assert job["error"]["code"] == "SPAWN_FAILED"
    assert "no_such_function" in job["error"]["message"]


@pytest.fixture
def default_types(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=str(DEFAULT_JOB_TYPES))


async def test_blacklist_sync_runs_as_an_internal_job(default_types: Settings) -> None:
    """The bundled blacklist_sync runs in the runner: five items, progress 5/5, a summary."""
    system = System(default_types)
    await system.start()
    try:
        async with system.client() as client:
            job_id = await start_job(client, "blacklist_sync")
            job = await wait_status(client, job_id, "completed", "failed")
            lines = await lines_of(client, job_id)
    finally:
        await system.stop()
    assert job["status"] == "completed"
    assert job["progress"]["current"] == 5
    assert job["result"]["summary"] == "5 Einträge abgeglichen, 0 entfernt"
    assert lines[0]["text"] == "Starte Blacklist Sync..."


async def test_internal_job_lines_are_cleaned_and_split_like_a_tools(
    settings: Settings, system: System
) -> None:
    """ctx.log of a long line with NUL: pieces within max_line_bytes, NUL shown as ␀."""
    await system.stop_service("runner")
    await system.start_runner("small", max_line_bytes=1000)
    async with system.client() as client:
        job_id = await start_job(client, "internal_hostile")
        job = await wait_status(client, job_id, "completed", "failed")
        lines = await lines_of(client, job_id)
    texts = [ln["text"] for ln in lines]
    assert job["status"] == "completed"
    assert all(len(t.removesuffix(SPLIT_MARKER).encode()) <= 1000 for t in texts)
    assert all(t.endswith(SPLIT_MARKER) for t in texts[:-1])
    assert "".join(t.removesuffix(SPLIT_MARKER) for t in texts) == "a␀b\x01" + "ä" * 3000
    assert job["result"]["summary"] == "nulhere"
    assert job["result"]["blob"].endswith("…")


async def test_internal_job_raising_a_huge_message_with_nul_fails_visibly(system: System) -> None:
    """An exception of 1 MB with a NUL fails the job CALLABLE_FAILED, its message cut and clean."""
    async with system.client() as client:
        job_id = await start_job(client, "internal_raises_hostile")
        job = await wait_status(client, job_id, "completed", "failed")
    assert job["error"]["code"] == "CALLABLE_FAILED"
    assert job["error"]["message"].startswith("The job raised ValueError: nulin a long long")
    assert len(job["error"]["message"]) < 4100
