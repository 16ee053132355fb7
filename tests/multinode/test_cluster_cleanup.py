"""The cluster fixture leaves no process behind: not when its setup times out, and not when the
test process itself dies in the middle of it (a session 15 run found an API alive two hours
after its tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path

import psutil
import pytest

from jobrunner.common.settings import Settings
from tests.cluster import running_node_cluster
from tests.faults.cluster import START_TIMEOUT
from tests.tools.runners import REPO, runner_env

# Stands for a test process in the middle of a cluster's setup: spawns the services as the
# fixture does, says their pids, and waits (for a readiness that the test cuts short).
SETTING_UP = """
import json, sys, time
from pathlib import Path
from tests.faults.services import Service
env, logs = json.loads(sys.argv[1]), Path(sys.argv[2])
services = [Service(name, name, env, logs / f"{name}.log") for name in ("runner", "api")]
for service in services:
    service.spawn()
print(" ".join(str(service.proc.pid) for service in services), flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def gone(pids: list[int], timeout: float = 60.0) -> list[int]:
    """The pids still alive once all are gone or ``timeout`` has passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while any(alive(pid) for pid in pids):  # noqa: ASYNC110 - other processes, polled
                await asyncio.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


async def test_services_die_with_the_test_process(settings: Settings, tmp_path: Path) -> None:
    """A test process killed while its cluster starts (its clean-up never runs) takes the API
    and runner it spawned with it."""
    setting_up = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SETTING_UP,
        json.dumps(runner_env(settings)),
        str(tmp_path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert setting_up.stdout is not None
    pids = [int(pid) for pid in (await setting_up.stdout.readline()).split()]
    try:
        async with asyncio.timeout(60):
            while b"runner started" not in (tmp_path / "runner.log").read_bytes():  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # another process's log, polled
        assert all(alive(pid) for pid in pids), "a service exited on its own"
        setting_up.send_signal(signal.SIGKILL)
        await setting_up.wait()
        assert await gone(pids) == []
    finally:
        for pid in pids:  # on failure: the services this test started, ended here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_setup_that_times_out_leaves_no_process_behind() -> None:
    """Services that do not start in time fail the cluster's setup, and everything it had
    started is stopped with it."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.raises(TimeoutError):
        async with running_node_cluster(ready_timeout=0.1):
            pass
    started = [
        child.pid for child in psutil.Process().children(recursive=True) if child.pid not in before
    ]
    assert await gone(started) == []


def starting_servers() -> list[str]:
    """The threads in the middle of a server's start (jobrunner/embedded), by name."""
    return [
        str(thread_id)
        for thread_id, frame in sys._current_frames().items()
        if any(
            "jobrunner/embedded/" in step.f_code.co_filename and step.f_code.co_name == "start"
            for step, _ in traceback.walk_stack(frame)
        )
    ]


async def test_a_start_that_times_out_while_servers_start_leaves_no_process_behind() -> None:
    """The cluster's own start timeout (below pytest's, whose firing would skip the clean-up)
    fires while its NATS nodes and Postgres start in threads: each finishes starting first, so
    that the clean-up stops it too (one started after the clean-up was left running)."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.raises(TimeoutError):
        async with running_node_cluster(start_timeout=0.5):
            pass
    assert starting_servers() == []
    started = [
        child.pid for child in psutil.Process().children(recursive=True) if child.pid not in before
    ]
    assert await gone(started) == []


def test_a_cluster_start_gives_up_well_before_pytest_does(pytestconfig: pytest.Config) -> None:
    """pytest-timeout firing in a cluster fixture's start skips its clean-up (the review of
    session 16 found a run's servers left behind so): the start's own timeout comes first, with
    time left for the clean-up (each server's stop waits up to 30 s)."""
    assert float(pytestconfig.getini("timeout")) >= START_TIMEOUT + 90
