"""The runner learns of its tools' exits through pidfds (process.PidfdChildWatcher): no thread
per tool, the exit code as the tool gave it, in every event loop of the process."""

from __future__ import annotations

import asyncio
import sys

import pytest

# Stands in for a runner: its loop starts tools as the runner does, in two loops in turn.
FAKE_RUNNER = """
import asyncio, signal, sys, threading
from jobrunner.services.runner import deathsignal
from jobrunner.services.runner.process import ToolProcess, watch_children_by_pidfd

async def run(argv):
    tool = ToolProcess(argv, None, None)
    await tool.start()
    threads = threading.active_count()
    if argv[0] == "sleep":
        tool.signal_group(signal.SIGKILL)
    return threads, await tool.wait()

assert watch_children_by_pidfd()
deathsignal.setpriv()  # asked at the runner's start (later, a thread asks it once)
for argv in (["sleep", "30"], [sys.executable, "-c", "raise SystemExit(3)"]):
    threads, code = asyncio.run(run(argv))  # a new event loop each time
    print(threads, code, flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="pidfd_open is Linux's")
async def test_tool_exit_learned_without_a_thread_in_every_loop() -> None:
    """A running tool adds no thread to its runner, and its exit code arrives in each loop."""
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FAKE_RUNNER, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, _ = await runner.communicate()
    assert runner.returncode == 0
    assert out.decode().split() == ["1", "-9", "1", "3"]
