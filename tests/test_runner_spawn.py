"""The runner reads its tools' pipes itself (process._Pipe): what it holds ends with the pump."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from datetime import datetime

import pytest

from jobrunner.services.runner.process import ToolProcess


async def no_wait() -> None:
    return None


@pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/fd")
async def test_a_pump_given_up_on_closes_the_tools_pipes() -> None:
    """A descendant outside the tool's group keeps its output open after the tool ended: the
    runner gives the pump up, and the pipes are closed and no longer watched."""
    before = len(os.listdir("/proc/self/fd"))
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
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
            os.kill(int(lines[0]), signal.SIGKILL)
