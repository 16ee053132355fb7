"""Freeze a server the way the fault tests mean it: every thread stopped before the test goes on.

``kill(pid, SIGSTOP)`` returns before all of a process's threads are stopped: the kernel stops
them one by one, and on a loaded machine a write the test sends right after may still be
answered by a thread not stopped yet (nats-server: 24 of 200 tries at load 0.5 had one running,
for up to 5 ms). A fault test that means "the server answers nothing from now on" waits here.

What a test freezes it thaws whatever happens (``frozen``, or ``thaw`` in a ``finally``): a
process left stopped hangs the next test that shares it, and the workers' clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path


def freeze(pid: int, within: float = 30.0) -> None:
    """SIGSTOP ``pid`` and return once every one of its threads is stopped."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + within
    while not stopped(pid):
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.001)


def stopped(pid: int) -> bool:
    """Every thread of ``pid`` stopped (state T in /proc/<pid>/task/<tid>/stat), or ended: a
    process that was exiting when SIGSTOP came (a Postgres backend whose client just left)
    never stops, it turns zombie (Z), and it never runs again either."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in "tTZX" for state in states)


def thaw(*pids: int) -> None:
    """SIGCONT each of ``pids``; one that ended meanwhile is passed over."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """``pids`` frozen (``freeze``, in turn) while the block runs, thawed at its end whatever
    happened in it."""
    try:
        for pid in pids:
            freeze(pid)
        yield
    finally:
        thaw(*pids)


def thaw_later(seconds: float, *pids: int) -> asyncio.TimerHandle:
    """``thaw(*pids)`` in ``seconds``, on the running loop. Cancel the handle on the way out:
    a thaw left behind would cut the next freeze of the same process short."""
    return asyncio.get_running_loop().call_later(seconds, thaw, *pids)
