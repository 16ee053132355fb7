"""A service whose NATS connection nats-py closed for good ends non-zero, so that it is restarted.

The close is provoked for real: the runner's user loses its password in a nats-server config
reload (a rotated password), and the server closes the runner's connection with
``-ERR 'Authorization Violation'``, which nats-py treats as final. The other services in this
test connect as another user and keep their connections.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import msgspec

from jobrunner.common.eventstore import NATS_CLOSED_EXIT
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.system import System
from tests.tools.runners import (
    RUNNER_TYPES,
    RunnerProcess,
    lines_of,
    start_job,
    status_events,
    wait_dead,
    wait_file,
    wait_job,
    wait_status,
)

SERVICES = ("services", "services-password")


def _write_users(nats: EmbeddedNats, runner_password: str) -> None:
    users = [
        {"user": SERVICES[0], "password": SERVICES[1]},
        {"user": "runner", "password": runner_password},
    ]
    # The server's name too: a reload refuses a config that would drop the one given at start.
    (nats.store_dir / "auth.conf").write_text(
        f'server_name: "jobrunner"\nauthorization {{ users: {json.dumps(users)} }}\n'
    )


def _runner_url(nats: EmbeddedNats, password: str) -> str:
    return f"nats://runner:{password}@{nats.host}:{nats.port}"


async def _wait_exit(runner: RunnerProcess, timeout: float = 15.0) -> int:
    assert runner.proc is not None
    async with asyncio.timeout(timeout):
        while runner.proc.poll() is None:  # noqa: ASYNC110 - nothing to wait on but the child
            await asyncio.sleep(0.05)
    return runner.proc.returncode


async def test_a_runner_whose_connection_the_server_closed_exits_and_its_restart_works(
    settings: Settings, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path / "nats", user=SERVICES[0], password=SERVICES[1])
    _write_users(nats, "first-password")
    nats.start()
    settings = msgspec.structs.replace(
        settings, nats_url=nats.url, job_types_file=RUNNER_TYPES, lease_ttl_seconds=3.0
    )
    system = System(settings)
    first_life = RunnerProcess(
        settings,
        tmp_path / "runner.log",
        runner_id="rotated",
        nats_url=_runner_url(nats, "first-password"),
    )
    # Its restart, as a supervisor started with the rotated password would run it.
    second_life = RunnerProcess(
        settings,
        tmp_path / "runner.log",
        runner_id="rotated",
        nats_url=_runner_url(nats, "second-password"),
    )
    try:
        await system.start_projector()
        await system.start_api()
        await first_life.start()
        async with system.client() as client:
            stranded = await start_job(client, "family", pidfile=str(tmp_path / "pids"))
            await wait_status(client, stranded, "running")
            tool, grandchild = map(int, (await wait_file(tmp_path / "pids")).split())

            _write_users(nats, "second-password")
            assert nats.proc is not None
            nats.proc.send_signal(signal.SIGHUP)  # reload: the runner's password is no more

            assert await _wait_exit(first_life) == NATS_CLOSED_EXIT
            log = (tmp_path / "runner.log").read_text()
            assert "nats connection closed for good" in log
            assert "authorization failed" in log  # nats-py's words for the -ERR
            # Its tool went with it (the guardian), so no second copy can run alongside.
            await wait_dead(tool)
            await wait_dead(grandchild)

            await second_life.start()
            lost = await wait_status(client, stranded, "failed", "completed", timeout=60)
            fresh = await start_job(client, "emit", lines=200, interval="0.001")
            done = await wait_status(client, fresh, "completed", "failed", timeout=60)
            await wait_job(client, fresh, lambda j: j["log_count"] == 200)
            lines = await lines_of(client, fresh)
        stranded_statuses = await status_events(settings, stranded)
    finally:
        first_life.stop()
        second_life.stop()
        await system.stop()
        nats.stop()
    assert lost["status"] == "failed"
    assert lost["error"]["code"] == "RUNNER_LOST"
    assert stranded_statuses == ["running", "failed"]
    assert done["status"] == "completed"
    assert [line["seq"] for line in lines] == list(range(1, 201))
    assert [line["text"] for line in lines] == [f"INFO line {i} [{i}/200]" for i in range(1, 201)]
