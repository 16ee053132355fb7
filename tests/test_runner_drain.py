"""The drain after a tool's exit (executor._drain): what the pump still has to hand on once the tool
ended. Time spent waiting for room in the publisher (NATS away) is not counted against the drain's
bound: every line is stored; a pipe held open by a process outside the tool's group is given up on
after the bound, and the job still ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner import executor, publisher
from tests.freeze import freeze
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, lines_of, start_job, wait_file, wait_job, wait_status

DRAIN = 2.0  # PUMP_DRAIN_SECONDS in these tests
BUFFERED = 1000  # the publisher's line limit in these tests: a small flood fills it
LINES = 3000  # more than it holds: the rest waits in the runner's reader and the pipe


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(executor, "PUMP_DRAIN_SECONDS", DRAIN)
    monkeypatch.setattr(publisher, "MAX_BUFFERED_LINES", BUFFERED)
    # A lease far longer than the outage: this is about the drain, not the lease.
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=60.0)


async def _flood_through_a_pause(
    settings: Settings, server: EmbeddedNats, tmp_path: Path, pause: float
) -> tuple[dict, list[dict]]:
    """NATS frozen while the tool floods and exits, and ``pause`` seconds after its exit."""
    settings = msgspec.structs.replace(settings, nats_url=server.url)
    go, done = tmp_path / "go", tmp_path / "done"
    system = System(settings)
    assert server.proc is not None
    try:
        await system.start()
        async with system.client() as client:
            job_id = await start_job(
                client, "flood_at_exit", lines=LINES, go=str(go), done=str(done)
            )
            await wait_job(client, job_id, lambda j: j["log_count"] >= 1)
            freeze(server.proc.pid)
            try:
                go.touch()
                await wait_file(done)  # the tool ended, its output not yet all read
                await asyncio.sleep(pause)  # the fault itself: NATS still away this long
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            job = await wait_status(client, job_id, "completed", "failed", timeout=90)
            lines = await lines_of(client, job_id)
    finally:
        await system.stop()
    return job, lines


EXPECTED = ["ready"] + [f"flood line {i:08d} {'x' * 40}" for i in range(1, LINES + 1)]


async def test_nats_away_a_little_less_than_the_drain_bound_after_the_exit_loses_no_line(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    job, lines = await _flood_through_a_pause(settings, own_nats, tmp_path, DRAIN - 0.5)
    assert job["status"] == "completed", job
    assert [ln["seq"] for ln in lines] == list(range(1, LINES + 2))
    assert [ln["text"] for ln in lines] == EXPECTED


async def test_nats_away_longer_than_the_drain_bound_after_the_exit_loses_no_line(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """The pump waits for room in the publisher, not on the pipe, for longer than the drain's
    bound: it is not given up on, and every line the tool printed is stored, in order."""
    job, lines = await _flood_through_a_pause(settings, own_nats, tmp_path, DRAIN + 2.0)
    assert job["status"] == "completed", job
    assert [ln["seq"] for ln in lines] == list(range(1, LINES + 2))
    assert [ln["text"] for ln in lines] == EXPECTED


@pytest.mark.parametrize("job_type", ["detached_holder", "detached_printer"])
async def test_output_held_open_outside_the_group_is_given_up_on_and_the_job_ends(
    settings: Settings, system: System, job_type: str
) -> None:
    """The tool exits, a detached process (out of its group) still holds its output open,
    silent or printing on: the drain gives the pipe up after its bound and the job completes
    with what was printed."""
    holder = None
    try:
        async with system.client() as client:
            job_id = await start_job(client, job_type)
            job = await wait_status(client, job_id, "completed", "failed", timeout=60)
            lines = await lines_of(client, job_id)
        holder = int(lines[0]["text"])
        assert job["status"] == "completed", job
        assert os.path.exists(f"/proc/{holder}")  # the pipe was still held when the job ended
    finally:
        if holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signal.SIGKILL)
