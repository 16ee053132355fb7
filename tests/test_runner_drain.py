"""The drain after a tool's exit (executor._drain): what the pump still has to hand on once the tool
ended. Time spent waiting for room in the publisher (NATS away) is not counted against the drain's
bound: every line is stored; a pipe held open by a process outside the tool's group is given up on
after the bound, and the job still ends; once the lease is lost nothing is added to the bound, and
a job whose output was given up on then does not end completed. A job whose output closed does not
wait for the bound at all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner import executor, publisher
from jobrunner.services.runner.publisher import LinePublisher
from tests.freeze import frozen
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
            with frozen(server.proc.pid):
                go.touch()
                await wait_file(done)  # the tool ended, its output not yet all read
                await asyncio.sleep(pause)  # the fault itself: NATS still away this long
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


LOST_TTL = 6.0  # the lease's TTL in the test of a lease lost during the drain


async def test_lease_lost_during_the_drain_gives_the_output_up_and_the_job_does_not_complete(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """NATS away after a flooding tool's exit for longer than its lease lasts: the time waited
    for room no longer extends the drain's bound once the lease is lost, the rest of the output
    is given up on, and the job ends failed LEASE_LOST, not completed with lines missing; the
    lines stored are the first ones, once each and in order."""
    settings = msgspec.structs.replace(settings, lease_ttl_seconds=LOST_TTL)
    job, lines = await _flood_through_a_pause(settings, own_nats, tmp_path, LOST_TTL + 2.0)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "LEASE_LOST", job
    assert 1 <= len(lines) < LINES + 1  # (the publisher held 1,000 lines: the rest was in the pipe)
    assert [ln["seq"] for ln in lines] == list(range(1, len(lines) + 1))
    assert [ln["text"] for ln in lines] == EXPECTED[: len(lines)]


async def test_a_jobs_end_does_not_wait_for_the_drain_bound_once_its_output_closed(
    settings: Settings, system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a bound of an hour, jobs whose output closes (a flood still in the pipe at the
    tool's exit, a few lines, an internal job) still end: the drain returns with the pump, it
    does not sleep out its bound (session 18's drain waited for the lease to be lost too, so
    every job whose pump had not finished at its exit ended the whole bound late)."""
    monkeypatch.setattr(executor, "PUMP_DRAIN_SECONDS", 3600.0)
    go = tmp_path / "go"
    go.touch()
    async with system.client() as client:
        for _ in range(3):
            flood = await start_job(
                client, "flood_at_exit", lines=LINES, go=str(go), done=str(tmp_path / "done")
            )
            emit = await start_job(client, "emit", lines=20)
            internal = await start_job(client, "internal_counts", lines=20)
            # (A timeout here only keeps a failing test from hanging for the bound's hour.)
            for job_id in (flood, emit, internal):
                job = await wait_status(client, job_id, "completed", "failed", timeout=60)
                assert job["status"] == "completed", job
            assert [ln["text"] for ln in await lines_of(client, flood)] == EXPECTED


async def test_stdout_and_stderr_waiting_for_room_at_once_count_once_and_keep_the_flag_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pump's stdout and stderr readers both wait for room (a tool flooding both): the time
    waited is wall time, not the sum of the two waits, and ``waiting_for_room`` stays up while
    either still waits (else the drain takes its plain clock wait and gives up on a pump that
    only waits for NATS)."""
    monkeypatch.setattr(publisher, "MAX_BUFFERED_LINES", 4)
    nc = await eventstore.connect(settings, "drain-test")
    try:
        pub = LinePublisher(nc, Names(), "drain-job", 100, 1000)  # never started: stays full
        for i in range(4):
            pub.add("stdout", "INFO", f"line {i}", datetime.now(UTC))

        async def stdout_reader() -> None:
            await pub.room()
            # Its StreamReader already holds more (read() answers without a turn of the loop):
            # the next chunk fills the buffer again and it waits anew.
            await pub.room()

        stdout = asyncio.ensure_future(stdout_reader())
        stderr = asyncio.ensure_future(pub.room())
        await asyncio.sleep(0.5)
        pub._room.set()  # room comes, as the publisher's _stored sets it
        await stderr
        await asyncio.sleep(0.1)
        assert not stdout.done()  # its second wait
        assert pub.waiting_for_room
        waited = pub.room_waited()
        assert 0.5 <= waited < 0.8, waited  # 0.6 s of wall time, not 0.5 + 0.6 s
        stdout.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stdout
        assert not pub.waiting_for_room
        assert 0.5 <= pub.room_waited() < 0.8
    finally:
        await nc.close()


ROOM_MOST = 4.0  # DRAIN_ROOM_MOST in the tests of its cap: NATS away throughout gives up at 6 s


async def test_nats_away_a_little_less_than_the_room_cap_allows_loses_no_line(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS away past the drain's bound but 2.5 s short of where the cap on room waits gives
    the output up (the bound plus the cap): the job completes with every line once, in order."""
    monkeypatch.setattr(executor, "DRAIN_ROOM_MOST", ROOM_MOST)
    job, lines = await _flood_through_a_pause(settings, own_nats, tmp_path, DRAIN + ROOM_MOST - 2.5)
    assert job["status"] == "completed", job
    assert [ln["seq"] for ln in lines] == list(range(1, LINES + 2))
    assert [ln["text"] for ln in lines] == EXPECTED


async def test_nats_away_past_the_room_cap_with_the_lease_held_fails_output_not_stored(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS away after a flooding tool's exit 1.5 s past the bound plus the cap on room waits,
    the lease still held (its TTL longer than that): the rest of the output is given up on
    while the pump waits for room, and the job ends failed OUTPUT_NOT_STORED, never completed
    with lines missing; the lines stored are the first ones, once each and in order."""
    monkeypatch.setattr(executor, "DRAIN_ROOM_MOST", ROOM_MOST)
    job, lines = await _flood_through_a_pause(settings, own_nats, tmp_path, DRAIN + ROOM_MOST + 1.5)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "OUTPUT_NOT_STORED", job
    assert "run the job again" in job["error"]["message"], job
    assert job["exit_code"] == 0, job
    assert 1 <= len(lines) < LINES + 1
    assert [ln["seq"] for ln in lines] == list(range(1, len(lines) + 1))
    assert [ln["text"] for ln in lines] == EXPECTED[: len(lines)]


async def test_a_quiet_detached_holder_and_a_lease_lost_during_the_drain_end_lease_lost(
    settings: Settings, own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tool exits 0 leaving a quiet detached process holding its output open, and NATS goes
    away during the drain for longer than the lease lasts: the pipe is given up on with the
    lease lost (the slot may be another runner's), so the job ends failed LEASE_LOST, not
    completed (README "Output after the tool's exit")."""
    monkeypatch.setattr(executor, "PUMP_DRAIN_SECONDS", LOST_TTL + 4.0)  # the lease goes first
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url, lease_ttl_seconds=LOST_TTL)
    system = System(settings)
    assert own_nats.proc is not None
    holder = None
    try:
        await system.start()
        async with system.client() as client:
            job_id = await start_job(client, "detached_holder")
            await wait_job(client, job_id, lambda j: j["log_count"] >= 1)  # the tool printed
            with frozen(own_nats.proc.pid):
                await asyncio.sleep(LOST_TTL + 2.0)
            job = await wait_status(client, job_id, "completed", "failed", timeout=60)
            lines = await lines_of(client, job_id)
        holder = int(lines[0]["text"])
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "LEASE_LOST", job
        assert os.path.exists(f"/proc/{holder}")  # the pipe was still held when the job ended
    finally:
        await system.stop()
        if holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signal.SIGKILL)
