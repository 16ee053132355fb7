"""The runner reads its tools' pipes itself (process._Pipe): what it holds ends with the pump."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
from datetime import datetime

import pytest

from jobrunner.services.runner import guardian, process
from jobrunner.services.runner.process import SpawnError, ToolProcess
from tests.tools.open_fds import open_fds


async def no_wait() -> None:
    return None


@pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/fd")
async def test_a_pump_given_up_on_closes_the_tools_pipes() -> None:
    """A descendant outside the tool's group keeps its output open after the tool ended: the
    runner gives the pump up, and the pipes are closed and no longer watched."""
    before = open_fds()
    tool = ToolProcess(["sh", "-c", "setsid sleep 30 & echo $!"], None, None)
    await tool.start()
    lines: list[str] = []
    read = asyncio.Event()

    def sink(stream: str, chunk: list[str], transient: str | None, at: datetime) -> None:
        lines.extend(chunk)
        read.set()

    pump = asyncio.create_task(tool.pump(sink, no_wait, 1024))
    try:
        async with asyncio.timeout(30):
            assert await tool.wait() == 0
            await read.wait()
        assert not pump.done()  # the escaped sleep holds the pipes open
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        assert open_fds() == before
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
            os.kill(int(lines[0]), signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/fd")
async def test_a_start_at_the_descriptor_limit_fails_the_job_and_leaves_nothing_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runner at its descriptor limit (EMFILE): with no room for a pipe, for the second
    one, or for the spawn's own descriptors, the start fails with a SpawnError (the job fails
    SPAWN_FAILED), closes every descriptor it made and forgets the guardian serial it took."""
    guard = guardian.Guardian()
    monkeypatch.setattr(process, "GUARDIAN", guard)
    assert guard.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    failed: list[int] = []
    try:
        for spare in range(8):
            tool = ToolProcess(["true"], None, None)
            before = open_fds()
            resource.setrlimit(resource.RLIMIT_NOFILE, (before + spare, hard))
            try:
                await tool.start()
            except SpawnError:
                failed.append(spare)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            if tool.proc is not None:  # room enough at last
                assert await tool.wait() == 0
                tool.end_group()
                tool.proc.close()
                break
            assert open_fds() == before
            assert guard._tools == {}  # every serial reserved was forgotten
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        guard.stop()
    assert failed[:3] == [0, 1, 2]  # no room for the first pipe, for the second one
    assert tool.proc is not None


async def test_a_pump_whose_sink_fails_leaves_no_read_waiting() -> None:
    """The sink raises on stderr's first line: the pump fails with it, and stdout's read (its
    pipe still open) is not left waiting for ever on a pipe the pump closed."""
    tool = ToolProcess(["sh", "-c", "echo err >&2; sleep 30; echo out"], None, None)
    await tool.start()

    def sink(stream: str, chunk: list[str], transient: str | None, at: datetime) -> None:
        if stream == "stderr" and chunk:
            raise RuntimeError("sink failed")

    try:
        with pytest.raises(RuntimeError, match="sink failed"):
            await tool.pump(sink, no_wait, 1024)
        reads = [
            task
            for task in asyncio.all_tasks()
            if task.get_coro().__qualname__ == "ToolProcess._read"  # type: ignore[union-attr]
        ]
        assert reads == []
    finally:
        tool.end_group()
        await tool.wait()
