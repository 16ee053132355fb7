"""Tools run at a lower CPU priority than the runner (``tool_nice``, priority.py): in their own
threads and in their session's autogroup, which is what weighs between sessions (sched(7)),
also when many start at once (the kernel takes one autogroup change per 100 ms)."""

from __future__ import annotations

import asyncio
import os

import pytest

from jobrunner.common.cpupriority import autogroup_niceness
from jobrunner.common.settings import Settings
from jobrunner.services.runner.priority import ToolPriority
from jobrunner.services.runner.process import ToolProcess

TOOLS = 4


def expected(by: int) -> int:
    return min(os.getpriority(os.PRIO_PROCESS, 0) + by, 19)


async def until_autogroup(pid: int, niceness: int) -> int | None:
    """The tool's autogroup niceness once it is ``niceness`` (or after a long wait for the
    kernel's one change per 100 ms, which other processes on the machine may be taking too)."""
    for _ in range(600):
        if autogroup_niceness(pid) == niceness:
            break
        await asyncio.sleep(0.05)
    return autogroup_niceness(pid)


async def assert_autogroups_lowered(tools: list[ToolProcess], by: int) -> None:
    """Every tool's autogroup ends ``by`` nicer than this process (skipped without autogroups)."""
    if autogroup_niceness(os.getpid()) is None:
        pytest.skip("no autogroups in this kernel")
    for tool in tools:
        assert tool.pid is not None
        assert await until_autogroup(tool.pid, expected(by)) == expected(by)


async def start_tools(priority: ToolPriority | None) -> list[ToolProcess]:
    tools = [ToolProcess(["sleep", "60"], None, None, priority) for _ in range(TOOLS)]
    for tool in tools:
        await tool.start()
    return tools


async def stop(tools: list[ToolProcess]) -> None:
    for tool in tools:
        tool.end_group()
        await tool.wait()


def test_tool_nice_is_a_setting_off_by_default() -> None:
    assert Settings().tool_nice == 0  # off unless asked for (a flood's throughput)
    with pytest.raises(
        ValueError,
        match="tool_nice = 20 is out of range: tool_nice takes a whole number from 0 to 19",
    ):
        Settings(tool_nice=20)


async def test_tools_started_together_are_all_nicer_in_thread_and_autogroup() -> None:
    tools = await start_tools(ToolPriority(by=5))
    try:
        for tool in tools:
            assert tool.pid is not None
            assert os.getpriority(os.PRIO_PROCESS, tool.pid) == expected(5)
        await assert_autogroups_lowered(tools, 5)
    finally:
        await stop(tools)


async def test_tool_nice_zero_leaves_tools_at_the_runners_priority() -> None:
    tools = await start_tools(ToolPriority(by=0))
    try:
        for tool in tools:
            assert tool.pid is not None
            assert os.getpriority(os.PRIO_PROCESS, tool.pid) == expected(0)
            assert autogroup_niceness(tool.pid) in (None, 0)  # a new session's group: 0
    finally:
        await stop(tools)


async def test_a_tool_gone_before_its_turn_is_skipped() -> None:
    priority = ToolPriority(by=3)
    first, second = await start_tools(priority), await start_tools(priority)
    await stop(first)  # some of them may still wait in the queue: they are skipped
    try:
        await assert_autogroups_lowered(second, 3)
    finally:
        await stop(second)
