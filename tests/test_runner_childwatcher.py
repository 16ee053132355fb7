"""The runner learns of its tools' exits through pidfds (process.PidfdChildWatcher): no thread
per tool, the exit code as the tool gave it, in every event loop of the process."""

from __future__ import annotations

import asyncio
import sys

import pytest

# Stands in for a runner: its loop starts tools as the runner does, in two loops in turn.
FAKE_RUNNER = """
import asyncio, signal, sys, threading
from jobrunner.common import deathsignal
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


# A runner whose loop is busy (here: one callback holding it) while a tool that exits at once
# starts: the tool is reaped before asyncio has connected its pipes.
BUSY_RUNNER = """
import asyncio, time
from jobrunner.services.runner.process import ToolProcess, watch_children_by_pidfd

async def run():
    tool = ToolProcess(["true"], None, None)
    asyncio.get_running_loop().call_soon(time.sleep, 0.5)  # the loop's other work
    await tool.start()
    code = await tool.wait()
    return tool.started_ticks, code

assert watch_children_by_pidfd()
print(*asyncio.run(run()), flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="pidfd_open is Linux's")
async def test_start_of_a_tool_that_exits_at_once_is_known() -> None:
    """A tool that exits at once, on a busy runner: its start (what tells its process group
    from a later one that reuses the pid) is still recorded."""
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BUSY_RUNNER, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, _ = await runner.communicate()
    assert runner.returncode == 0
    started, code = out.decode().split()
    assert code == "0"
    assert started != "None"
    assert int(started) > 0


# A runner whose loop spawns children that are not tools (an internal job's own subprocesses)
# and tool starts cancelled while asyncio connects their pipes, then counts what the process
# module holds.
SPAWNING_RUNNER = """
import asyncio
from jobrunner.services.runner import process

def held():
    return sum(len(v) for v in vars(process).values() if isinstance(v, (dict, set, list)))

async def spawn_directly(n):
    for _ in range(n):
        child = await asyncio.create_subprocess_exec("true")
        await child.wait()

async def cancelled_starts(n):
    for _ in range(n):
        start = asyncio.create_task(process.ToolProcess(["sleep", "0.2"], None, None).start())
        await asyncio.sleep(0)  # spawned; asyncio now connects the pipes
        start.cancel()
        try:
            await start
        except asyncio.CancelledError:
            pass
    await asyncio.sleep(0.5)

assert process.watch_children_by_pidfd()
before = held()
asyncio.run(spawn_directly(100))
asyncio.run(cancelled_starts(20))
print(held() - before, flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="pidfd_open is Linux's")
async def test_children_that_are_not_started_tools_leave_nothing_behind() -> None:
    """The starts the pidfd watcher reads for tools are kept only while their tool starts:
    children spawned otherwise, and starts cancelled midway, leave no entry behind."""
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SPAWNING_RUNNER, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, _ = await runner.communicate()
    assert runner.returncode == 0
    assert out.decode().split() == ["0"]
