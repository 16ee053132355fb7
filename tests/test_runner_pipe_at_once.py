"""A small read of a tool's pipe goes to the sink in the pipe's own callback while the pump's
read waits (``ToolProcess.pump``'s ``at_once``): a quiet job's line is in its publisher's buffer
a turn of the runner's loop sooner, the turn that beside a flood holds a slice of the flood."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime

import pytest

from jobrunner.services.runner.process import ToolProcess

# Five lines 20 ms apart, each its own small read (after the runner's side of the pipes is up).
QUIET = (
    "import time\ntime.sleep(0.1)\n"
    "for i in range(5):\n    print(i, flush=True)\n    time.sleep(0.02)\n"
)


async def no_wait() -> None:
    pass


async def pumped(
    script: str, at_once: bool | None
) -> tuple[list[str], list[asyncio.Task[object] | None]]:
    """Every line a tool running ``script`` printed, and the task each sink call ran in (None:
    in the pipe's callback); ``at_once`` None passes no ``at_once`` at all."""
    tool = ToolProcess([sys.executable, "-c", script], None, None)
    await tool.start()
    lines: list[str] = []
    tasks: list[asyncio.Task[object] | None] = []

    def sink(stream: str, chunk: list[str], transient: str | None, at: datetime) -> None:
        if chunk:
            lines.extend(chunk)
            tasks.append(asyncio.current_task())

    def decide(now: float, last: float) -> bool:
        return bool(at_once)

    await asyncio.wait_for(
        tool.pump(sink, no_wait, 65536, None, None if at_once is None else decide), 30
    )
    await tool.wait()
    return lines, tasks


async def test_a_small_read_reaches_the_sink_in_the_pipes_callback() -> None:
    """Each line printed alone is handed to the sink in the pipe's callback (no task), every
    line once and in order."""
    lines, tasks = await pumped(QUIET, at_once=True)
    assert lines == [str(i) for i in range(5)]
    assert tasks == [None] * len(tasks)


@pytest.mark.parametrize("at_once", [False, None])
async def test_a_read_the_publisher_does_not_take_at_once_goes_the_reads_way(
    at_once: bool | None,
) -> None:
    """Refused (the buffer full, or the pipe to rest after it), or no ``at_once`` given: the
    pump's read task hands it over, as before."""
    lines, tasks = await pumped(QUIET, at_once=at_once)
    assert lines == [str(i) for i in range(5)]
    assert tasks
    assert None not in tasks


async def test_large_reads_go_the_reads_way_and_order_holds_with_small_ones() -> None:
    """A flood's large pieces (8 KiB lines) go through the read task; the small lines printed
    between and after them come in order, each line once."""
    script = (
        "import os, time\ntime.sleep(0.1)\n"
        "for i in range(6):\n"
        "    os.write(1, (str(i) * 8191 + '\\n').encode() if i % 2 else f'{i}\\n'.encode())\n"
        "    time.sleep(0.02)\n"
    )
    lines, tasks = await pumped(script, at_once=True)
    assert [line[:1] for line in lines] == [str(i) for i in range(6)]
    assert [len(line) for line in lines] == [1, 8191, 1, 8191, 1, 8191]
    assert None in tasks
    assert any(task is not None for task in tasks)


async def test_a_sink_failing_in_the_pipes_callback_fails_the_pump() -> None:
    """The sink raises on a line taken in the pipe's callback: the pump fails with that error,
    as it does when the read task's sink call raises, and no read is left waiting."""
    tool = ToolProcess([sys.executable, "-c", QUIET], None, None)
    await tool.start()

    def sink(stream: str, chunk: list[str], transient: str | None, at: datetime) -> None:
        if chunk:
            assert asyncio.current_task() is None  # in the pipe's callback
            raise RuntimeError("sink failed")

    try:
        with pytest.raises(RuntimeError, match="sink failed"):
            await asyncio.wait_for(
                tool.pump(sink, no_wait, 65536, None, lambda now, last: True), 30
            )
        reads = [
            task
            for task in asyncio.all_tasks()
            if task.get_coro().__qualname__ == "ToolProcess._read"  # type: ignore[union-attr]
        ]
        assert reads == []
    finally:
        tool.end_group()
        await tool.wait()
