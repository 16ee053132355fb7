"""Cancel and timeout: the whole process group ends, grandchildren included."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import pytest
from nats.js.errors import NotFoundError

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import RunRecord, SlotTable
from jobrunner.contracts.names import Names
from jobrunner.services.runner.execution import ToolExecution
from jobrunner.services.runner.running import RunningJob
from tests.system import System
from tests.tools.runners import (
    RUNNER_TYPES,
    pid_alive,
    start_job,
    status_events,
    wait_dead,
    wait_file,
    wait_status,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease TTL long enough that a loaded test machine never lets a live lease lapse.
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


async def _family_pids(pidfile: Path) -> tuple[int, int]:
    tool, grandchild = (await wait_file(pidfile)).split()
    return int(tool), int(grandchild)


async def test_cancel_kills_grandchild_that_ignores_sigterm(system: System, tmp_path: Path) -> None:
    """Cancelling a running job ends the tool and its SIGTERM-deaf grandchild; status cancelled."""
    pidfile = tmp_path / "pids"
    async with system.client() as client:
        job_id = await start_job(client, "family", pidfile=str(pidfile))
        tool, grandchild = await _family_pids(pidfile)
        assert pid_alive(grandchild)
        response = await client.delete(f"/api/jobs/{job_id}")
        assert response.status_code == 202, response.text
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    assert job["status"] == "cancelled"
    assert job["error"] is None
    await wait_dead(tool)
    await wait_dead(grandchild)


async def test_cancel_reaches_a_tool_that_ignores_sigterm_after_the_grace_period(
    system: System, tmp_path: Path
) -> None:
    """A tool deaf to SIGTERM is killed once cancel_grace_seconds have passed."""
    pidfile = tmp_path / "pids"
    async with system.client() as client:
        job_id = await start_job(client, "family", pidfile=str(pidfile), ignore_term=True)
        tool, grandchild = await _family_pids(pidfile)
        await client.post(f"/api/jobs/{job_id}/cancel")
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    assert job["status"] == "cancelled"
    assert job["exit_code"] == -9
    await wait_dead(tool)
    await wait_dead(grandchild)


async def test_a_cancel_that_sees_a_started_job_as_pending_leaves_its_end_to_the_runner(
    settings: Settings, tmp_path: Path
) -> None:
    """The read model still shows the job pending while its tool runs (the projector behind,
    as on a loaded machine): the cancel stops the tool, and the job ends cancelled with the
    tool's exit code, stored once by its runner."""
    system = System(settings)
    await system.start_projector()
    await system.start_api()
    pidfile = tmp_path / "pids"
    try:
        async with system.client() as client:
            job_id = await start_job(client, "family", pidfile=str(pidfile), ignore_term=True)
            # POST waits at most READ_YOUR_WRITES_TIMEOUT for the read model: a loaded machine's
            # projector may not have shown the job yet, and the cancel would answer 404.
            await wait_status(client, job_id, "pending")
            await system.stop_service("projector")  # the read model keeps showing it pending
            await system.start_runner()
            tool, grandchild = await _family_pids(pidfile)  # its ``running`` is stored
            response = await client.post(f"/api/jobs/{job_id}/cancel")
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "running"  # its runner stops it
            await system.start_projector()
            job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    finally:
        await system.stop()
    assert (job["status"], job["exit_code"]) == ("cancelled", -9)
    assert await status_events(settings, job_id) == ["running", "cancelled"]
    await wait_dead(tool)
    await wait_dead(grandchild)


async def test_cancelled_pending_job_never_starts(
    settings: Settings, system: System, tmp_path: Path
) -> None:
    """A queued job cancelled while it waits becomes cancelled and its tool never runs."""
    count = tmp_path / "starts"
    params = {"pidfile": str(tmp_path / "pids"), "count_file": str(count)}
    async with system.client() as client:
        first = await start_job(client, "locked_family", **params)
        await wait_status(client, first, "running")
        await wait_file(count)  # the first tool really started
        waiting = await start_job(
            client, "locked_family", pidfile=str(tmp_path / "pids2"), count_file=str(count)
        )
        response = await client.delete(f"/api/jobs/{waiting}")
        assert response.status_code == 202
        assert response.json()["status"] == "cancelled"
        job = await wait_status(client, waiting, "cancelled")
        assert job["started_at"] is None
        await client.delete(f"/api/jobs/{first}")
        await wait_status(client, first, "cancelled")
        # The slot is free again: the next job starts (the cancelled one is not in the way).
        third = await start_job(
            client, "locked_family", pidfile=str(tmp_path / "pids3"), seconds="0"
        )
        await wait_status(client, third, "completed")
    assert len(count.read_text().split()) == 1
    assert not (tmp_path / "pids2").exists()


async def test_job_cancelled_before_a_runner_took_it_never_starts(
    settings: Settings, tmp_path: Path
) -> None:
    """A job without a lock, cancelled while no runner was up, ends cancelled and never runs."""
    system = System(settings)
    await system.start_projector()
    await system.start_api()
    count = tmp_path / "starts"
    try:
        async with system.client() as client:
            job_id = await start_job(
                client, "family", pidfile=str(tmp_path / "pids"), count_file=str(count)
            )
            response = await client.delete(f"/api/jobs/{job_id}")
            assert response.json()["status"] == "cancelled"
            # Its request reaches a runner for the first time only now.
            await system.start_runner()
            await _wait_requests_handled(settings)
            job = await wait_status(client, job_id, "cancelled", "failed", "completed")
            record = await _run_record(settings, job_id)
    finally:
        await system.stop()
    assert job["status"] == "cancelled"
    assert job["started_at"] is None
    assert await status_events(settings, job_id) == ["cancelled"]
    assert not count.exists()
    assert record is None  # the record written while it was checked is gone again


async def _run_record(settings: Settings, job_id: str) -> RunRecord | None:
    nc = await eventstore.connect(settings, "test-run-record")
    try:
        return await SlotTable(nc.jetstream(), Names(settings.prefix), 5).run_record(job_id)
    finally:
        await eventstore.close(nc)


async def _wait_requests_handled(settings: Settings, timeout: float = 30.0) -> None:
    """Until the runners' consumer has delivered every request and had each acknowledged."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test-consumer-info")
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(NotFoundError):  # the runner has not made it yet
                    info = await nc.jetstream().consumer_info(names.stream, names.runner_consumer)
                    delivered = info.delivered.consumer_seq if info.delivered else 0
                    if delivered and info.num_pending == 0 and info.num_ack_pending == 0:
                        return
                await asyncio.sleep(0.05)
    finally:
        await eventstore.close(nc)


async def test_cancelling_a_finished_job_answers_409_with_its_status(system: System) -> None:
    """Cancel on a completed job is refused and says how the job ended."""
    async with system.client() as client:
        job_id = await start_job(client, "emit", lines=1)
        await wait_status(client, job_id, "completed")
        response = await client.delete(f"/api/jobs/{job_id}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "JOB_FINISHED"
    assert response.json()["error"]["status"] == "completed"


async def test_cancelling_twice_is_harmless(
    settings: Settings, system: System, tmp_path: Path
) -> None:
    """Two cancels of one running job: both accepted or told it ended; it ends cancelled once."""
    pidfile = tmp_path / "pids"
    async with system.client() as client:
        job_id = await start_job(client, "family", pidfile=str(pidfile))
        await _family_pids(pidfile)
        responses = await asyncio.gather(
            client.delete(f"/api/jobs/{job_id}"), client.delete(f"/api/jobs/{job_id}")
        )
        assert {r.status_code for r in responses} <= {202, 409}
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
        again = await client.delete(f"/api/jobs/{job_id}")
    assert job["status"] == "cancelled"
    assert again.status_code == 409
    assert await status_events(settings, job_id) == ["running", "cancelled"]


async def test_timeout_fails_the_job_and_ends_its_process_group(
    system: System, tmp_path: Path
) -> None:
    """A job past its timeout is stopped, group and all, and fails with PROCESSING_TIMEOUT."""
    pidfile = tmp_path / "pids"
    async with system.client() as client:
        job_id = await start_job(client, "short_timeout", pidfile=str(pidfile))
        tool, grandchild = await _family_pids(pidfile)
        job = await wait_status(client, job_id, "failed", "completed", "cancelled")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "PROCESSING_TIMEOUT"
    assert "timeout of 1 s" in job["error"]["message"]
    await wait_dead(tool)
    await wait_dead(grandchild)


async def test_a_cancel_during_a_timed_out_jobs_grace_leaves_it_failed_processing_timeout(
    system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeout stopped the job first: a cancel that reaches it while its tool has its grace
    does not make it ``cancelled`` (it fails PROCESSING_TIMEOUT, as it would have anyway)."""
    stop, cancel = ToolExecution.stop, RunningJob.cancel
    job_ids: list[str] = []
    cancel_reached = asyncio.Event()

    def cancel_noted(job: RunningJob, by: str | None) -> None:
        cancel(job, by)
        cancel_reached.set()

    async def cancelled_as_it_stops(execution: ToolExecution, grace_seconds: float) -> None:
        async with system.client() as client:
            response = await client.post(f"/api/jobs/{job_ids[0]}/cancel")
            assert response.status_code < 300, response.text
        await cancel_reached.wait()  # the runner has it: the job's cancel is set from here
        await stop(execution, grace_seconds)

    monkeypatch.setattr(RunningJob, "cancel", cancel_noted)
    monkeypatch.setattr(ToolExecution, "stop", cancelled_as_it_stops)
    async with system.client() as client:
        job_ids.append(await start_job(client, "short_timeout", pidfile=str(tmp_path / "pids")))
        job = await wait_status(client, job_ids[0], "failed", "completed", "cancelled")
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "PROCESSING_TIMEOUT"
