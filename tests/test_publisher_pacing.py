"""Pacing of a job's line messages: with many jobs running, lines printed one at a time gather
in fewer messages (and are read from the tool's pipe in fewer reads); a line after a quiet
spell, and a job's last lines, are never held back."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.services.runner.process import ToolProcess
from jobrunner.services.runner.publisher import (
    FLOOD_BYTES,
    FLOOD_PACE,
    PACE_MAX,
    PACE_PER_JOB,
    LinePublisher,
    PublishPacing,
    pacing_wait,
    read_rest,
)

JOB = "pacedjob"


@pytest.fixture
async def nats(settings: Settings) -> AsyncIterator[NATS]:
    nc = await eventstore.connect(settings, "test-pacing")
    await eventstore.ensure_topology(nc.jetstream(), Names(settings.prefix), settings)
    yield nc
    await eventstore.close(nc)


class Stored:
    """The job's LineLogged messages as JetStream stores them."""

    def __init__(self) -> None:
        self.messages: list[events.LineLogged] = []
        self.arrived = asyncio.Event()

    async def keep(self, msg: Msg) -> None:
        event = codec.decode(msg.data)
        assert isinstance(event, events.LineLogged)
        self.messages.append(event)
        self.arrived.set()

    async def lines(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` lines are stored."""
        async with asyncio.timeout(timeout):
            while sum(len(e.lines) for e in self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def stored_messages(nc: NATS, names: Names) -> Stored:
    stored = Stored()
    await nc.subscribe(names.job_kind_subject(JOB, "lines"), cb=stored.keep)
    await nc.flush()
    return stored


def test_window_grows_with_the_jobs_running_up_to_a_cap() -> None:
    """One job is not paced beyond a publish's round trip; a hundred are, up to the cap."""
    pacing = PublishPacing()
    assert pacing.window() == 0
    pacing.publishers = 1
    assert pacing.window() == PACE_PER_JOB < 0.001
    pacing.publishers = 10_000
    assert pacing.window() == PACE_MAX


async def test_a_flood_is_paced_on_a_faster_clock_than_lines_printed_one_at_a_time(
    nats: NATS, settings: Settings
) -> None:
    """Once a job has a flood's worth of output waiting, its pipe rests (and its messages
    wait) until the ticks of the faster clock; before, until those of the job printing a line
    at a time."""
    pacing = PublishPacing(per_job=1.0, cap=1.0)
    pacing.publishers = 1
    publisher = LinePublisher(nats, Names(settings.prefix), JOB, pacing=pacing)
    publisher.add("stdout", "INFO", "one line", datetime.now(UTC))
    assert publisher.read_rest(now=100.0001, last_read=100.0) == pytest.approx(0.9999)
    for _ in range(FLOOD_BYTES // 100):
        publisher.add("stdout", "INFO", "x" * 100, datetime.now(UTC))
    assert publisher.read_rest(now=100.0001, last_read=100.0) == pytest.approx(FLOOD_PACE - 0.0001)


def test_a_line_after_a_quiet_spell_waits_for_nothing() -> None:
    """Only a message following the previous one within the window waits, never longer."""
    assert pacing_wait(now=10.0, last_publish=9.0, window=0.02) == 0
    assert pacing_wait(now=10.0, last_publish=9.99, window=0.02) == 0
    assert 0 < pacing_wait(now=10.001, last_publish=10.0005, window=0.02) <= 0.02


def test_busy_jobs_publish_on_the_same_ticks() -> None:
    """Jobs that published at different moments send their next messages at the same moment
    (one socket write for all of them)."""
    window = 0.02
    now = 100.013
    due = {now + pacing_wait(now, last, window) for last in (100.001, 100.007, 100.012)}
    assert len(due) == 1
    assert due.pop() == pytest.approx(100.02)


def test_a_pipe_rests_until_the_next_tick_only_while_its_tool_prints_often() -> None:
    """A read soon after the one before rests the pipe until the clock's next tick (the tick the
    publisher sends on); a read after a quiet spell, or without pacing, rests nothing."""
    window = 0.02
    assert read_rest(now=100.013, last_read=100.001, window=window) == pytest.approx(0.007)
    # The reads at consecutive ticks (each a little late) stay paced.
    assert read_rest(now=100.0201, last_read=100.0003, window=window) == pytest.approx(0.0199)
    assert read_rest(now=100.013, last_read=99.9, window=window) == 0
    assert read_rest(now=100.013, last_read=100.001, window=0) == 0


async def reads(script: str, rest: float) -> list[list[str]]:
    """The lines of each read of a tool running ``script`` whose pipe rests ``rest`` seconds."""
    tool = ToolProcess([sys.executable, "-c", script], None, None)
    await tool.start()
    got: list[list[str]] = []

    async def room() -> None:
        pass

    def sink(stream: str, lines: list[str], transient: str | None, at: datetime) -> None:
        if lines:
            got.append(lines)

    def pace(now: float, last: float) -> Awaitable[None] | None:
        if not rest:
            return None
        return asyncio.sleep(rest)

    await asyncio.wait_for(tool.pump(sink, room, 65536, pace), 30)
    await tool.wait()
    return got


async def test_lines_printed_while_the_pipe_rests_come_in_one_read() -> None:
    """A tool printing three lines 100 ms apart under a one-second rest: the lines after the
    first read arrive together, in order, and none is lost."""
    script = "import time\nfor t in 'abc':\n    print(t, flush=True)\n    time.sleep(0.1)\n"
    rested = await reads(script, 1.0)
    assert [line for lines in rested for line in lines] == ["a", "b", "c"]
    assert rested[-1][-2:] == ["b", "c"]


async def test_a_busy_pipe_is_not_read_while_it_rests(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool printing two lines at once, then three lines 200 ms apart under a two-second
    rest: the three wait in the pipe and are read in one read (not one read and wake-up of the
    runner's loop each), in order, none lost."""
    pieces_read: list[bytes] = []  # each read of the pipes that brought output
    feed_data = asyncio.StreamReader.feed_data

    def counting(reader: asyncio.StreamReader, data: bytes) -> None:
        pieces_read.append(bytes(data))
        feed_data(reader, data)

    # (One write each: print() under PYTHONUNBUFFERED=1 writes "a\nb" and "\n" apart.)
    script = (
        "import os, time\ntime.sleep(0.2)\nos.write(1, b'a\\nb\\n')\n"
        "for t in b'cde':\n    time.sleep(0.2)\n    os.write(1, bytes([t]) + b'\\n')\n"
    )
    monkeypatch.setattr(asyncio.StreamReader, "feed_data", counting)
    rested = await reads(script, 2.0)
    assert rested == [["a", "b"], ["c", "d", "e"]], rested
    assert pieces_read == [b"a\nb\n", b"c\nd\ne\n"]


async def paced_pump(
    script: str, rest: float, block_at_tick: float = 0.0, cancel: bool = False
) -> tuple[list[str], list[list[str]], int]:
    """A tool running ``script`` pumped under the publish clock as the runner paces it: each
    read rests until a tick ``rest`` seconds on, and a publisher waits for the same tick after
    the pipe (its message leaves on it). ``block_at_tick``: the loop is busy with other work
    from 3 ms before each tick until that long after it. ``cancel``: the pump is given up on
    in its first rest. The lines handed on, in order; what had been handed on when each tick's
    message left; the selector's entries left once the tool ended that are none of the test's."""
    loop = asyncio.get_running_loop()
    pacing = PublishPacing()
    got: list[str] = []
    at_ticks: list[list[str]] = []
    before = set(loop._selector.get_map())  # type: ignore[attr-defined]
    tool = ToolProcess([sys.executable, "-c", script], None, None)
    await tool.start()

    async def room() -> None:
        pass

    def sink(stream: str, lines: list[str], transient: str | None, at: datetime) -> None:
        got.extend(lines)
        if cancel and lines:
            loop.call_soon(pump.cancel)  # (once the pipe rests: the sink comes before the rest)

    def pace(now: float, last: float) -> Awaitable[None] | None:
        tick = now + rest
        resting = pacing.until(tick)
        pacing.until(tick).add_done_callback(lambda _: at_ticks.append(list(got)))
        if block_at_tick:
            loop.call_at(tick - 0.003, time.sleep, 0.003 + block_at_tick)
        return resting

    pump = asyncio.ensure_future(tool.pump(sink, room, 65536, pace))
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(pump, 30)
    await asyncio.wait_for(tool.wait(), 30)
    left = set(loop._selector.get_map()) - before  # type: ignore[attr-defined]
    return got, at_ticks, len(left)


async def test_a_busy_pipes_lines_leave_on_its_tick_when_the_loop_is_late() -> None:
    """A tool prints two lines at once (its pipe is unpolled while it rests until the tick),
    then one more during the rest. The loop is busy with other jobs' work from 3 ms before the
    tick to 7 ms after: the line printed during the rest is still handed on before the message
    leaving on that tick is made, not a window later."""
    script = "import os, time\nos.write(1, b'a\\nb\\n')\ntime.sleep(0.05)\nos.write(1, b'c\\n')\n"
    script += "time.sleep(0.5)\n"
    got, at_ticks, _ = await paced_pump(script, rest=0.2, block_at_tick=0.007)
    assert got == ["a", "b", "c"]
    assert at_ticks[0] == ["a", "b", "c"]


async def test_a_tool_ending_while_its_pipe_rests_unpolled_loses_no_line() -> None:
    """A tool printing on stdout and stderr and exiting at once, its pipes resting unpolled:
    every line arrives, in order per stream, and the pump ends."""
    script = (
        "import os\nos.write(1, b'a\\nb\\n')\nos.write(1, b'c\\n')\n"
        "os.write(2, b'e1\\ne2\\n')\nos.write(1, b'd')\n"
    )
    got, _, left = await paced_pump(script, rest=0.3)
    assert [line for line in got if not line.startswith("e")] == ["a", "b", "c", "d"]
    assert [line for line in got if line.startswith("e")] == ["e1", "e2"]
    assert left == 0


async def test_a_pump_given_up_on_while_its_pipe_rests_leaves_no_watch_on_the_pipe() -> None:
    """The pump is cancelled while the pipe rests unpolled: the lines read before arrive, and
    no watch of the closed pipe is left in the loop (a number the next pipe may reuse)."""
    script = "import os, time\nos.write(1, b'a\\nb\\n')\ntime.sleep(0.05)\n"
    script += "os.write(1, b'c\\n')\ntime.sleep(1)\n"
    got, _, left = await paced_pump(script, rest=0.3, cancel=True)
    assert got == ["a", "b"]
    assert left == 0


async def test_a_flood_pipe_never_rests() -> None:
    """Large pieces (4 KiB lines, each one write the kernel never splits, 300 ms apart) are
    each read when written, rest or no rest."""
    script = (
        "import os, time\nfor t in 'abc':\n"
        "    os.write(1, (t * 4095 + '\\n').encode())\n    time.sleep(0.3)\n"
    )
    assert [lines[0][0] for lines in await reads(script, 5.0)] == ["a", "b", "c"]


async def test_lines_printed_one_at_a_time_gather_in_fewer_messages(
    nats: NATS, settings: Settings
) -> None:
    """20 lines 5 ms apart (a job at 200 lines/s) under a 50 ms window: a few messages, every
    line in order, none twice."""
    names = Names(settings.prefix)
    got = await stored_messages(nats, names)
    publisher = LinePublisher(nats, names, JOB, pacing=PublishPacing(per_job=0.05, cap=0.05))
    publisher.start()
    for i in range(20):
        publisher.add("stdout", "INFO", f"line {i}", datetime.now(UTC))
        await asyncio.sleep(0.005)
    await publisher.close()
    await got.lines(20)
    assert [line.text for e in got.messages for line in e.lines] == [f"line {i}" for i in range(20)]
    assert publisher.messages == len(got.messages) <= 6


async def test_a_lone_line_is_published_at_once_and_the_end_is_not_held(
    nats: NATS, settings: Settings
) -> None:
    """Under a window of a minute the first line still goes out at once, and closing publishes
    the lines the window holds without waiting for it."""
    names = Names(settings.prefix)
    got = await stored_messages(nats, names)
    publisher = LinePublisher(nats, names, JOB, pacing=PublishPacing(per_job=60, cap=60))
    publisher.start()
    publisher.add("stdout", "INFO", "first", datetime.now(UTC))
    await got.lines(1)
    publisher.add("stdout", "INFO", "held", datetime.now(UTC))
    async with asyncio.timeout(10):
        while publisher._pausing is None:  # noqa: ASYNC110 - a state of the publisher, no event
            await asyncio.sleep(0.01)  # (until the window holds "held" back)
    await asyncio.wait_for(publisher.close(), 10)
    await got.lines(2)
    assert [e.lines[0].text for e in got.messages] == ["first", "held"]


async def test_each_piece_of_a_pipe_reaches_its_reader_without_a_callback_of_its_own() -> None:
    """A tool printing 30 lines one write at a time: each read of its pipe is in the reader at
    once, not passed on by a callback a turn of the loop later (a callback per line printed at
    100 jobs printing 200 lines/s each); every line arrives, in order, and the exit is known."""
    loop = asyncio.get_running_loop()
    deferred: list[str] = []
    call_soon = loop.call_soon

    def counting(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        deferred.append(getattr(callback, "__name__", ""))
        return call_soon(callback, *args, **kwargs)

    # (It starts printing once the runner's side of its pipes is set up.)
    script = (
        "import time\ntime.sleep(0.1)\n"
        "for i in range(30):\n    print(i, flush=True)\n    time.sleep(0.002)\n"
    )
    loop.call_soon = counting  # type: ignore[method-assign, assignment]
    try:
        got = await reads(script, 0.0)
    finally:
        del loop.call_soon
    assert [line for lines in got for line in lines] == [str(i) for i in range(30)]
    assert deferred.count("pipe_data_received") == 0


async def test_the_jobs_waiting_for_the_same_tick_share_one_timer() -> None:
    """100 jobs resting until the same tick (their pipes, their next messages): one timer for
    all of them, each its own future, all resolved at the tick; one given up early (a job's
    end) takes nothing from the others."""
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, callback, *args, **kwargs)

    pacing = PublishPacing()
    tick = loop.time() + 0.05
    loop.call_at = counting  # type: ignore[method-assign, assignment]
    try:
        waiting = [pacing.until(tick) for _ in range(100)]
    finally:
        del loop.call_at
    assert timers == [tick]
    assert len({id(future) for future in waiting}) == 100
    waiting[0].set_result(None)  # the first job closed: its publisher no longer waits
    await asyncio.wait_for(asyncio.gather(*waiting[1:]), 5)
    assert loop.time() >= tick


async def test_a_paced_message_wakes_its_publisher_once_not_again_for_its_ack(
    nats: NATS, settings: Settings
) -> None:
    """400 lines buffered at once, 20 a message, under a 50 ms window: the publisher's task
    wakes at each tick and takes the previous message's ack then (it came meanwhile), instead
    of waking for the ack too (two wake-ups a message, each a resumption of the awaits down to
    the ack inbox); every line in order, none twice."""
    loop = asyncio.get_running_loop()
    names = Names(settings.prefix)
    got = await stored_messages(nats, names)
    publisher = LinePublisher(
        nats, names, JOB, batch_max=20, pacing=PublishPacing(per_job=0.05, cap=0.05)
    )
    wakeups = 0
    call_soon = loop.call_soon

    def counting(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        nonlocal wakeups
        if publisher._task is not None and getattr(callback, "__self__", None) is publisher._task:
            wakeups += 1
        return call_soon(callback, *args, **kwargs)

    publisher.start()
    loop.call_soon = counting  # type: ignore[method-assign, assignment]
    try:
        for i in range(400):
            publisher.add("stdout", "INFO", f"line {i:03}", datetime.now(UTC))
        await got.lines(400)
    finally:
        del loop.call_soon
    await publisher.close()
    assert [line.text for e in got.messages for line in e.lines] == [
        f"line {i:03}" for i in range(400)
    ]
    assert publisher.messages == len(got.messages) == 20
    # One a message, and a few for an ack that came after its tick on a loaded machine.
    assert wakeups < 1.5 * publisher.messages, wakeups
