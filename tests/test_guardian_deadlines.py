"""A stalled runner's tools die at their lease's deadline: the guardian program (guardian_main.py)
kills a tool's group once the deadline the runner wrote passes with no later one, never before,
never a process that only got a written pid, and a guardian started after another's death is
told the deadlines too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from jobrunner.services.runner import guardian, orphans, process
from jobrunner.services.runner.process import ToolProcess
from tests.tools.runners import REPO, pid_alive, wait_dead

PROGRAM = str(REPO / "jobrunner" / "services" / "runner" / "guardian_main.py")
# A tool whose group holds a child too: the whole group must go.
WITH_CHILD = "sleep 60 & echo $!; wait"
DEADLINE = 1.0  # seconds from now: long enough to look before it, short for a fast test


Write = Callable[[bytes], None]


@contextlib.asynccontextmanager
async def guardian_program() -> AsyncIterator[Write]:
    """The guardian program reading a pipe this test writes to, as the runner's guardian.py
    starts it; SIGKILLed at the end before its pipe closes (an end of file would kill all)."""
    read, end = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            PROGRAM,
            os.urandom(12).hex(),
            stdin=read,
            start_new_session=True,
        )
    finally:
        os.close(read)

    def write(line: bytes) -> None:
        os.write(end, line)

    try:
        yield write
    finally:
        proc.kill()
        await proc.wait()
        os.close(end)


@contextlib.asynccontextmanager
async def tool_group() -> AsyncIterator[tuple[int, int]]:
    """A tool in a group of its own with a child in it: (tool pid, child pid), killed at the end."""
    tool = await asyncio.create_subprocess_exec(
        "sh", "-c", WITH_CHILD, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert tool.stdout is not None
    child = int(await asyncio.wait_for(tool.stdout.readline(), 30))
    try:
        yield tool.pid, child
    finally:
        for pid in (tool.pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await tool.wait()


def written(serial: int, pid: int) -> bytes:
    """The lines that write a started tool down, as guardian.py writes them."""
    return b"s%d\n+%d %d %d\n" % (serial, serial, pid, orphans.start_ticks(pid) or 0)


def deadline_line(serial: int, at: float) -> bytes:
    return b"d%d %.6f\n" % (serial, at)


async def alive_until(pids: tuple[int, ...], until: float) -> None:
    """Every pid stays alive until ``until`` (a little before it: the poll's own step)."""
    while time.monotonic() < until - 0.05:
        for pid in pids:
            assert pid_alive(pid), f"process {pid} died {until - time.monotonic():.2f} s early"
        await asyncio.sleep(0.02)


async def test_a_tools_group_dies_once_its_deadline_passes_and_not_before() -> None:
    """A tool written with a deadline runs until the deadline, then it and its child die."""
    async with guardian_program() as write, tool_group() as (tool, child):
        at = time.monotonic() + DEADLINE
        write(written(1, tool) + deadline_line(1, at))
        await alive_until((tool, child), at)
        await wait_dead(tool)
        await wait_dead(child)


async def test_a_renewed_deadline_keeps_the_tool_running() -> None:
    """A deadline moved on before it passes, again and again for several times its length,
    keeps the tool alive; once no new one comes, the tool dies."""
    async with guardian_program() as write, tool_group() as (tool, child):
        write(written(1, tool))
        renew_until = time.monotonic() + 4 * DEADLINE
        while (now := time.monotonic()) < renew_until:
            write(deadline_line(1, now + DEADLINE))
            await asyncio.sleep(DEADLINE / 5)
            assert pid_alive(tool)
            assert pid_alive(child)
        await wait_dead(tool)
        await wait_dead(child)


async def test_a_deadline_passing_spares_a_process_that_got_the_written_pid() -> None:
    """A tool written down with other start ticks (its pid reused since) is not killed at its
    deadline, while a tool written beside it with the same deadline is."""
    async with (
        guardian_program() as write,
        tool_group() as (stranger, _),
        tool_group() as (tool, _),
    ):
        reused = b"s1\n+1 %d %d\n" % (stranger, (orphans.start_ticks(stranger) or 0) - 1)
        at = time.monotonic() + DEADLINE / 2
        write(reused + written(2, tool) + deadline_line(1, at) + deadline_line(2, at))
        await wait_dead(tool)
        assert pid_alive(stranger)


async def test_a_tool_forgotten_before_its_deadline_is_left_alone() -> None:
    """A tool whose group the runner ended and wrote off (``-``) is not killed at its old
    deadline: its pid may be another's by then."""
    async with guardian_program() as write, tool_group() as (kept, _), tool_group() as (tool, _):
        at = time.monotonic() + DEADLINE / 2
        write(written(1, kept) + deadline_line(1, at) + b"-1\n")
        write(written(2, tool) + deadline_line(2, at))
        await wait_dead(tool)
        assert pid_alive(kept)


async def test_a_deadline_weeks_away_leaves_the_guardian_killing_at_the_others() -> None:
    """A lease TTL of weeks puts a tool's deadline further off than one poll can sleep: the
    guardian sleeps towards it in steps, and kills another tool at its deadline meanwhile."""
    async with (
        guardian_program() as write,
        tool_group() as (far, _),
        tool_group() as (first, _),
        tool_group() as (second, _),
    ):
        weeks = time.monotonic() + 40 * 86400
        soon = time.monotonic() + DEADLINE / 2
        write(
            written(1, far) + deadline_line(1, weeks) + written(2, first) + deadline_line(2, soon)
        )
        await wait_dead(first)  # the guardian's nearest deadline is now weeks away
        write(written(3, second) + deadline_line(3, time.monotonic() + DEADLINE / 2))
        await wait_dead(second)
        assert pid_alive(far)


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[guardian.Guardian]:
    """A guardian of this test's own, as the runner's, for the tools started here."""
    own = guardian.Guardian()
    monkeypatch.setattr(process, "GUARDIAN", own)
    yield own
    own.stop()


async def test_a_guardian_started_after_anothers_death_is_told_the_deadlines(
    guard: guardian.Guardian,
) -> None:
    """The guardian SIGKILLed after the runner wrote a tool's deadline: the one started in its
    place kills the tool at that deadline, and the runner reads the tool's end as the guardian's
    (the job's lease lost), not as a tool that failed."""
    assert guard.start()
    tool = ToolProcess(["sleep", "60"], None, None)
    await tool.start()
    assert tool.pid is not None
    try:
        at = time.monotonic() + 2 * DEADLINE
        tool.hold_until(at)
        first = guard.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        async with asyncio.timeout(15):
            while guard.pid in (first, None):  # noqa: ASYNC110 - replaced in this loop's callback
                await asyncio.sleep(0.02)
        await alive_until((tool.pid,), at)
        exit_code = await asyncio.wait_for(tool.wait(), 15)
        assert exit_code == -signal.SIGKILL
        assert tool.killed_at_deadline(exit_code)
    finally:
        tool.end_group()


async def test_a_deadline_given_before_the_start_goes_to_the_guardian_with_the_tool(
    guard: guardian.Guardian,
) -> None:
    """The lease's deadline given before the tool starts (the runner's order) is written with
    the tool's group: the tool dies at it, not before."""
    assert guard.start()
    tool = ToolProcess(["sleep", "60"], None, None)
    at = time.monotonic() + DEADLINE
    tool.hold_until(at)
    await tool.start()
    assert tool.pid is not None
    try:
        await alive_until((tool.pid,), at)
        exit_code = await asyncio.wait_for(tool.wait(), 15)
        assert tool.killed_at_deadline(exit_code)
    finally:
        tool.end_group()
