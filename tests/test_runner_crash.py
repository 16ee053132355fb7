"""Crash safety: a runner killed mid-job, a runner restarted, a NATS server restarted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.runner.board import LockBoard
from tests.freeze import freeze
from tests.system import System
from tests.tools.runners import (
    RUNNER_TYPES,
    RunnerProcess,
    dead_runner_beside,
    lines_of,
    pid_alive,
    start_job,
    status_events,
    wait_dead,
    wait_file,
    wait_job,
    wait_status,
)

if TYPE_CHECKING:
    from jobrunner.common.slots import RunRecord, SlotValue
    from jobrunner.services.runner.service import Runner


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES)


async def _pids(pidfile: Path) -> tuple[int, int]:
    tool, grandchild = (await wait_file(pidfile)).split()
    return int(tool), int(grandchild)


async def test_killed_runner_job_ends_runner_lost_and_the_next_queued_job_runs(
    settings: Settings, tmp_path: Path
) -> None:
    """SIGKILL a runner mid-job: the job fails RUNNER_LOST, its orphans die, the queue moves on."""
    system = System(settings)
    await system.start_projector()
    await system.start_api()
    doomed = RunnerProcess(settings, tmp_path / "doomed.log", runner_id="doomed")
    survivor = RunnerProcess(settings, tmp_path / "survivor.log", runner_id="survivor")
    await doomed.start()
    try:
        async with system.client() as client:
            first = await start_job(
                client,
                "locked_family",
                pidfile=str(tmp_path / "pids1"),
                count_file=str(tmp_path / "starts1"),
            )
            await wait_status(client, first, "running")
            tool, grandchild = await _pids(tmp_path / "pids1")
            second = await start_job(
                client,
                "locked_family",
                pidfile=str(tmp_path / "pids2"),
                count_file=str(tmp_path / "starts2"),
                seconds="0",
            )
            # The survivor is up (and done with its start-up clean-up) before the crash, so it
            # learns of the crash only from the expiring lease.
            await survivor.start()
            doomed.kill()
            lost = await wait_status(client, first, "failed", "completed", "cancelled")
            await wait_dead(tool)
            await wait_dead(grandchild)
            after = await wait_status(client, second, "completed", "failed", timeout=60)
    finally:
        doomed.stop()
        survivor.stop()
        await system.stop()
    assert lost["status"] == "failed"
    assert lost["error"]["code"] == "RUNNER_LOST"
    assert "stopped renewing its lease" in lost["error"]["message"]
    assert after["status"] == "completed"
    assert lost["finished_at"] <= after["started_at"]
    # The lost job ran once and ended once.
    assert len((tmp_path / "starts1").read_text().split()) == 1
    assert await status_events(settings, first) == ["running", "failed"]


@dataclasses.dataclass
class Crash:
    """A runner ("phoenix") running a job whose tool started a grandchild, and the same runner's
    next life, not started yet."""

    client: httpx.AsyncClient
    first_life: RunnerProcess
    second_life: RunnerProcess
    job_id: str
    tool: int
    grandchild: int


@contextlib.asynccontextmanager
async def a_job_on_a_runner_to_crash(settings: Settings, tmp_path: Path) -> AsyncIterator[Crash]:
    # A lease far longer than the restart: only the restarted runner can end the job this soon.
    settings = msgspec.structs.replace(settings, lease_ttl_seconds=30.0)
    system = System(settings)
    first_life = RunnerProcess(settings, tmp_path / "runner.log", runner_id="phoenix")
    # Most of these tests' time is two Python start-ups of a runner process (about 0.7 s of CPU
    # each, several seconds on a loaded machine); the first overlaps the API's start.
    await asyncio.gather(first_life.start(), system.start_projector(), system.start_api())
    second_life = RunnerProcess(settings, tmp_path / "runner.log", runner_id="phoenix")
    try:
        async with system.client() as client:
            job_id = await start_job(client, "family", pidfile=str(tmp_path / "pids"))
            await wait_status(client, job_id, "running")
            tool, grandchild = await _pids(tmp_path / "pids")
            yield Crash(client, first_life, second_life, job_id, tool, grandchild)
    finally:
        first_life.stop()
        second_life.stop()
        await system.stop()


def assert_ended_by_the_next_start(lost: dict[str, Any]) -> None:
    assert lost["error"]["code"] == "RUNNER_LOST"
    assert "a runner starting on its host ended the job's processes" in lost["error"]["message"]


async def test_restarted_runner_cleans_up_before_taking_work(
    settings: Settings, tmp_path: Path
) -> None:
    """A runner restarted after a crash ends its predecessor's tools and job before new work."""
    async with a_job_on_a_runner_to_crash(settings, tmp_path) as crash:
        crash.first_life.kill()
        await crash.second_life.start()
        lost = await wait_status(crash.client, crash.job_id, "failed", "completed", "cancelled")
        await wait_dead(crash.grandchild)
        await wait_dead(crash.tool)
        after = await start_job(crash.client, "emit", lines=3)
        done = await wait_status(crash.client, after, "completed", "failed")
    assert_ended_by_the_next_start(lost)
    assert done["status"] == "completed"
    assert not list((Path(settings.state_dir) / "runner-tools").glob("*.json"))


def _guardian_of(runner_pid: int) -> int:
    """The pid of the runner's tool guardian (guardian.py): its child running guardian_main."""
    for entry in Path("/proc").iterdir():
        try:
            ppid = int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(entry, "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == runner_pid and b"guardian_main.py" in cmdline:
            return int(entry.name)
    raise AssertionError(f"runner {runner_pid} has no guardian")


async def test_runner_killed_with_its_guardian_leaves_its_tools_to_its_next_start(
    settings: Settings, tmp_path: Path
) -> None:
    """Runner and guardian killed together: nothing kills the tool at once, and the runner's
    next start ends it and its grandchild from its ledger, and the job, before new work."""
    async with a_job_on_a_runner_to_crash(settings, tmp_path) as crash:
        guardian = _guardian_of(crash.first_life.pid)
        freeze(crash.first_life.pid)  # it cannot start another guardian
        os.kill(guardian, signal.SIGKILL)
        await wait_dead(guardian)
        crash.first_life.kill()
        await asyncio.sleep(0.5)
        assert pid_alive(crash.tool)
        assert pid_alive(crash.grandchild)
        await crash.second_life.start()
        lost = await wait_status(crash.client, crash.job_id, "failed", "completed", "cancelled")
        await wait_dead(crash.grandchild)
        await wait_dead(crash.tool)
    assert_ended_by_the_next_start(lost)


async def test_nats_restart_mid_job_loses_no_line(settings: Settings, tmp_path: Path) -> None:
    """NATS goes down and comes back while a tool prints: every line arrives exactly once."""
    store = tmp_path / "nats"
    port = free_port()
    nats = EmbeddedNats(store, port=port)
    nats.start()
    settings = msgspec.structs.replace(settings, nats_url=nats.url, lease_ttl_seconds=15.0)
    system = System(settings)
    try:
        await system.start()
        async with system.client() as client:
            job_id = await start_job(client, "emit", lines=400, interval="0.01")
            await wait_job(client, job_id, lambda j: j["log_count"] >= 50)
            nats.kill()
            # Keep NATS away while the tool goes on printing (an outage, not a synchronisation).
            await asyncio.sleep(1.0)
            nats = EmbeddedNats(store, port=port)
            nats.start()
            job = await wait_status(client, job_id, "completed", "failed", timeout=90)
            lines = await lines_of(client, job_id)
    finally:
        await system.stop()
        nats.stop()
    assert job["status"] == "completed"
    assert job["log_count"] == 400
    assert [ln["seq"] for ln in lines] == list(range(1, 401))
    assert [ln["text"] for ln in lines] == [f"INFO line {i} [{i}/400]" for i in range(1, 401)]


async def test_runner_restarted_after_its_lease_expired_still_ends_the_job(
    settings: Settings, tmp_path: Path
) -> None:
    """With no runner alive when the lease expired, the restarted runner ends job and orphans."""
    system = System(settings)
    await system.start_projector()
    await system.start_api()
    first_life = RunnerProcess(settings, tmp_path / "runner.log", runner_id="alone")
    second_life = RunnerProcess(settings, tmp_path / "runner.log", runner_id="alone")
    await first_life.start()
    try:
        async with system.client() as client:
            job_id = await start_job(client, "family", pidfile=str(tmp_path / "pids"))
            await wait_status(client, job_id, "running")
            _, grandchild = await _pids(tmp_path / "pids")
            first_life.kill()
            await _wait_lease_gone(settings, job_id)
            assert (await client.get(f"/api/jobs/{job_id}")).json()["status"] == "running"
            await second_life.start()
            lost = await wait_status(client, job_id, "failed", "completed", "cancelled")
            await wait_dead(grandchild)
    finally:
        first_life.stop()
        second_life.stop()
        await system.stop()
    assert lost["error"]["code"] == "RUNNER_LOST"


async def _wait_lease_gone(settings: Settings, job_id: str, timeout: float = 30.0) -> None:
    from jobrunner.common import eventstore
    from jobrunner.common.slots import SlotTable, slot_key
    from jobrunner.contracts.names import Names

    nc = await eventstore.connect(settings, "test-lease")
    try:
        slots = SlotTable(nc.jetstream(), Names(settings.prefix), settings.lease_ttl_seconds)
        async with asyncio.timeout(timeout):
            while await slots.current(slot_key(None, job_id)) is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        await eventstore.close(nc)


@pytest.mark.parametrize("found", ["lease expired", "dead runner's lease at start"])
async def test_a_lost_runners_job_that_had_ended_is_not_ended_again_past_the_duplicate_window(
    settings: Settings, found: str
) -> None:
    """A runner stored its job's end and died (or NATS paused) before removing the job's record
    and lease: the runner that finds the lease expired, or the dead runner's live lease at its
    start, only removes what is left. The stream drops a second end (same event id) only within
    its duplicate window, which is shrunk here rather than waited out."""
    from jobrunner.common import eventstore
    from jobrunner.common.slots import slot_key
    from jobrunner.contracts.events import JobStatus
    from jobrunner.services.runner.service import Runner

    nc = await eventstore.connect(settings, "test-runner")
    try:
        runner = Runner(settings, nc)
        await eventstore.ensure_topology(runner.js, runner.names, settings)
        stream = (await runner.js.stream_info(runner.names.stream)).config
        stream.duplicate_window = 0.5
        await runner.js.update_stream(stream)
        dead = await dead_runner_beside(runner.identity)
        job_id = "ended-then-lost"
        key = slot_key(None, job_id)
        held = dead.held_value(job_id, "emit")
        record = dead.run_record(job_id, key)
        lease, recorded = await runner.slots.create_recorded(key, held, record)
        assert lease is not None
        assert recorded
        await runner.journal.end(job_id, JobStatus.COMPLETED, exit_code=0, job_type="emit")
        await asyncio.sleep(1.0)  # past the duplicate window
        if found == "lease expired":
            await _wait_lease_gone(settings, job_id)
            await runner.sweeper.on_lease_expired(held)
        else:
            runner.board.slots[key] = held
            await runner.sweeper.clean_up_after_crash()
        assert await status_events(settings, job_id) == ["completed"]
        assert await runner.slots.run_record(job_id) is None
        assert await runner.slots.current(key) is None
    finally:
        await eventstore.close(nc)


@contextlib.asynccontextmanager
async def a_doomed_runner_and_one_elsewhere(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[System, RunnerProcess, RunnerProcess]]:
    """The API and the projector, a runner ("doomed") started, and a runner not started yet on
    another machine as far as the tool ledger goes: only a sweep of it can find the doomed
    runner's job. All stopped at the end."""
    system = System(settings)
    await system.start_projector()
    await system.start_api()
    doomed = RunnerProcess(settings, tmp_path / "doomed.log", runner_id="doomed")
    elsewhere = RunnerProcess(
        settings,
        tmp_path / "elsewhere.log",
        runner_id="elsewhere",
        state_dir=str(tmp_path / "elsewhere"),
    )
    await doomed.start()
    try:
        yield system, doomed, elsewhere
    finally:
        doomed.stop()
        elsewhere.stop()
        await system.stop()


async def test_job_left_running_while_no_runner_was_up_is_swept_by_any_runner(
    settings: Settings, tmp_path: Path
) -> None:
    """Every runner down while the lease expired, then a runner elsewhere starts: the job ends."""
    runners = a_doomed_runner_and_one_elsewhere(settings, tmp_path)
    async with runners as (system, doomed, elsewhere), system.client() as client:
        job_id = await start_job(client, "emit", lines=100_000, interval="0.05")
        await wait_status(client, job_id, "running")
        doomed.kill()
        await _wait_lease_gone(settings, job_id)
        await elsewhere.start()
        lost = await wait_status(client, job_id, "failed", "completed", "cancelled")
    assert lost["error"]["code"] == "RUNNER_LOST"
    assert await status_events(settings, job_id) == ["running", "failed"]


async def test_internal_job_of_a_killed_runner_ends_runner_lost(
    settings: Settings, tmp_path: Path
) -> None:
    """An internal job whose runner was SIGKILLed ends RUNNER_LOST once a runner is up again."""
    system = System(settings)
    await system.start_projector()
    await system.start_api()
    first_life = RunnerProcess(settings, tmp_path / "runner.log", runner_id="inner")
    second_life = RunnerProcess(settings, tmp_path / "runner.log", runner_id="inner")
    await first_life.start()
    try:
        async with system.client() as client:
            job_id = await start_job(client, "internal_forever")
            await wait_status(client, job_id, "running")
            first_life.kill()
            await _wait_lease_gone(settings, job_id)
            await second_life.start()
            lost = await wait_status(client, job_id, "failed", "completed", "cancelled")
    finally:
        first_life.stop()
        second_life.stop()
        await system.stop()
    assert lost["error"]["code"] == "RUNNER_LOST"


async def test_job_of_a_lost_runner_ends_even_when_the_lock_watcher_died(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner whose lease watcher is dead still ends the job of a runner that was killed."""

    async def dead_watch(self: LockBoard, *args: object) -> None:
        self.ready.set()  # then ends, as a crashed watcher would: no expiry is ever seen

    system = System(settings)
    await system.start_projector()
    await system.start_api()
    doomed = RunnerProcess(settings, tmp_path / "doomed.log", runner_id="doomed")
    await doomed.start()
    try:
        async with system.client() as client:
            job_id = await start_job(client, "emit", lines=100_000, interval="0.05")
            await wait_status(client, job_id, "running")
            monkeypatch.setattr(LockBoard, "watch", dead_watch)
            # Its own tool ledger: its start-up clean-up must not be what ends the job.
            await system.start_runner(state_dir=str(tmp_path / "other"))
            doomed.kill()
            lost = await wait_status(client, job_id, "failed", "completed", "cancelled")
    finally:
        doomed.stop()
        await system.stop()
    assert lost["error"]["code"] == "RUNNER_LOST"


async def test_cancelled_job_whose_runner_died_before_ending_it_ends_cancelled(
    settings: Settings, tmp_path: Path
) -> None:
    """Cancel a job, and its runner dies before it could stop the tool: the job ends cancelled,
    by whoever cancelled it, not failed."""
    runners = a_doomed_runner_and_one_elsewhere(settings, tmp_path)
    async with runners as (system, doomed, elsewhere), system.client() as client:
        job_id = await start_job(client, "emit", lines=100_000, interval="0.05")
        await wait_status(client, job_id, "running")
        # Frozen, it cannot act on the cancel; no other runner is up to find it lost yet.
        freeze(doomed.pid)
        cancel = await client.delete(f"/api/jobs/{job_id}")
        assert cancel.status_code == 202, cancel.text
        doomed.kill()
        await _wait_lease_gone(settings, job_id)
        await elsewhere.start()
        ended = await wait_status(client, job_id, "failed", "completed", "cancelled")
    assert ended["status"] == "cancelled"
    assert ended["cancelled_by"] == "test-admin"
    assert ended["exit_code"] is None
    assert ended["error"]["code"] == "RUNNER_LOST"
    assert await status_events(settings, job_id) == ["running", "cancelled"]


@dataclasses.dataclass
class DeadRunnersJob:
    """A job ``running`` under the lease and run record of a runner that is dead, and the live
    runner (in this process, not started) that is to find it."""

    runner: Runner
    job_id: str
    held: SlotValue
    record: RunRecord


@contextlib.asynccontextmanager
async def a_dead_runners_job(settings: Settings, job_id: str) -> AsyncIterator[DeadRunnersJob]:
    from jobrunner.common import eventstore
    from jobrunner.common.slots import slot_key
    from jobrunner.contracts import events
    from jobrunner.services.runner.service import Runner

    nc = await eventstore.connect(settings, "test-runner")
    try:
        runner = Runner(settings, nc)
        await eventstore.ensure_topology(runner.js, runner.names, settings)
        dead = await dead_runner_beside(runner.identity)
        key = slot_key(None, job_id)
        held = dead.held_value(job_id, "emit")
        record = dead.run_record(job_id, key)
        lease, recorded = await runner.slots.create_recorded(key, held, record)
        assert lease is not None
        assert recorded
        await runner.journal.publish(
            events.StatusChanged(
                job_id=job_id, status=events.JobStatus.RUNNING, runner_id=dead.runner_id
            )
        )
        yield DeadRunnersJob(runner, job_id, held, record)
    finally:
        await eventstore.close(nc)


async def _find_lost(job: DeadRunnersJob, settings: Settings, found: str) -> None:
    """Let the live runner find the dead runner's job the way ``found`` names."""
    from nats.aio.msg import Msg

    from jobrunner.contracts import events
    from jobrunner.services.runner.orphans import ToolRecord
    from jobrunner.services.runner.running import RunningJob

    sweeper = job.runner.sweeper
    if found == "lease expired":
        await _wait_lease_gone(settings, job.job_id)
        await sweeper.on_lease_expired(job.held)
    elif found == "sweep":
        await _wait_lease_gone(settings, job.job_id)
        await sweeper.sweep_record(job.record)
    elif found == "redelivered request":
        # Its runner died between storing ``running`` and acking the request: delivered again
        # (not a first delivery: a plain message, whose JetStream metadata cannot be read).
        await _wait_lease_gone(settings, job.job_id)
        request = events.JobRequested(job_id=job.job_id, job_type="emit")
        again = Msg(job.runner.nc, subject="redelivered", reply=f"_INBOX.{job.job_id}")
        await job.runner.requests._handle_request(request, RunningJob(job.job_id, again))
    elif found == "dead runner's lease at start":
        job.runner.board.slots[job.record.slot_key] = job.held
        await sweeper.clean_up_after_crash()
    else:  # its tool in this host's ledger, its lease expired while no runner watched
        await _wait_lease_gone(settings, job.job_id)
        assert job.held.runner_pid is not None  # a held lease names its runner
        job.runner.ledger.record(
            # A group that cannot match a live process: its leader started at the end of time.
            ToolRecord(
                job_id=job.job_id,
                pgid=job.held.runner_pid,
                started=2**62,
                boot_id=job.held.boot_id or "",
                runner_pid=job.held.runner_pid,
                runner_started=1,
            )
        )
        await sweeper.clean_up_after_crash()


LOST_JOB_FINDINGS = [
    "lease expired",
    "sweep",
    "redelivered request",
    "dead runner's lease at start",
    "tool ledger",
]


@pytest.mark.parametrize("cancelled", [True, False], ids=["cancelled", "not-cancelled"])
@pytest.mark.parametrize("found", LOST_JOB_FINDINGS)
async def test_a_lost_runners_job_ends_cancelled_when_a_cancel_is_stored(
    settings: Settings, found: str, cancelled: bool
) -> None:
    """However a dead runner's job is found, it ends cancelled (by whoever asked, no exit code)
    when a cancel of it is stored, else failed RUNNER_LOST; one ending either way."""
    from jobrunner.contracts import events

    job_id = (
        "lost-" + "".join(c for c in found if c.isalpha()) + ("-cancelled" if cancelled else "")
    )
    async with a_dead_runners_job(settings, job_id) as job:
        if cancelled:
            await job.runner.journal.publish(
                events.CancelRequested(job_id=job_id, requested_by="alice")
            )
        await _find_lost(job, settings, found)
        ending = await job.runner.journal.last_status(job_id)
        assert await job.runner.slots.run_record(job_id) is None
    assert ending is not None
    if cancelled:
        assert ending.status == events.JobStatus.CANCELLED
        assert ending.cancelled_by == "alice"
        assert ending.exit_code is None
        # Cancelled, and the record says the tool's end was never seen: its runner was lost.
        assert ending.error is not None
        assert ending.error.code == events.ErrorCode.RUNNER_LOST
    else:
        assert ending.status == events.JobStatus.FAILED
        assert ending.error is not None
        assert ending.error.code == events.ErrorCode.RUNNER_LOST
    assert await status_events(settings, job_id) == ["running", ending.status.value]


async def test_a_cancel_stored_after_the_sweep_decided_adds_no_second_ending(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel (with the ending of a job the API saw pending) stored just after the sweep
    found none: the job ends failed RUNNER_LOST, once."""
    from jobrunner.common import endings
    from jobrunner.contracts import events
    from jobrunner.services.api.actions import Attempt, cancel_events
    from jobrunner.services.runner.journal import JobJournal

    job_id = "lost-cancel-too-late"
    async with a_dead_runners_job(settings, job_id) as job:
        journal = job.runner.journal
        read = JobJournal.last_event
        late: list[dict[str, endings.Stored]] = []

        async def cancel_right_after_the_read(
            self: JobJournal, read_job_id: str, kind: str
        ) -> events.AnyEvent | None:
            found = await read(self, read_job_id, kind)
            if kind == "cancel" and not late:
                pending = Attempt(id=job_id, job_type="emit", status="pending")
                batch = cancel_events(pending, "bob", None)
                late.append((await endings.publish_with_endings(self.js, self.names, batch))[1])
            return found

        monkeypatch.setattr(JobJournal, "last_event", cancel_right_after_the_read)
        await _find_lost(job, settings, "sweep")
        monkeypatch.undo()
        ending = await journal.last_status(job_id)
        cancel = await journal.last_event(job_id, "cancel")
    assert late, "the sweep never read the job's cancel"
    # The cancel's own ending found the job started: its runner's (here the sweep's) to end.
    assert not late[0][job_id].stored
    assert isinstance(cancel, events.CancelRequested)
    assert ending is not None
    assert ending.status == events.JobStatus.FAILED
    assert ending.error is not None
    assert ending.error.code == events.ErrorCode.RUNNER_LOST
    assert await status_events(settings, job_id) == ["running", "failed"]
