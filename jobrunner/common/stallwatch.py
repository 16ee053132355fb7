"""Telling when a service's event loop stops turning, and where it was stuck.

Everything a service does waits its turn on one event loop: a lease renewal, a line's publish, an
SSE frame. A loop that stops for seconds (a blocking call, a long computation, a machine so loaded
that the process is not scheduled) shows up elsewhere as a lost lease or a late line, long after
the cause is gone. A watch thread notices the stall while it lasts and logs it once, with the
stack the loop is stuck in and how much CPU the loop's thread used meanwhile: about all of the
stall means computing (the stack says what), little of it means blocked in a call or starved of
CPU by the machine. When the loop turns again it logs how long the stall was.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator

import structlog

log = structlog.get_logger()

# A loop that has not turned for this long is reported (a lease's renewals bear a few seconds).
STALL_SECONDS = 1.0
TICK_SECONDS = 0.2
STACK_FRAMES = 12


def thread_cpu_seconds(native_id: int) -> float | None:
    """CPU time (user + system) of one thread of this process (Linux; None elsewhere)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    # After the command: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class StallWatch:
    """Reports stalls of the running loop longer than ``stall_seconds``."""

    def __init__(self, stall_seconds: float = STALL_SECONDS, tick: float = TICK_SECONDS) -> None:
        self.stall_seconds = stall_seconds
        self.tick = min(tick, stall_seconds / 4)
        self.stalls = 0  # stalls reported so far
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.current_thread()
        self._beat = time.monotonic()
        self._done = threading.Event()
        self._handle: asyncio.TimerHandle | None = None
        # Run in a copy of the starting context: its lines carry the fields bound for the log
        # (``service=``, bound in ``cli``), which a new thread would otherwise start without.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._watch,),
            name="stall-watch",
            daemon=True,
        )

    def start(self) -> None:
        self._heartbeat()
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._handle is not None:
            self._handle.cancel()
        self._thread.join(timeout=5)

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        self._handle = self._loop.call_later(self.tick, self._heartbeat)

    def _watch(self) -> None:
        stalled_since: float | None = None  # the loop's last beat before the stall
        noticed_at = 0.0
        cpu_at_notice: float | None = None
        reported = False
        while not self._done.wait(self.tick):
            beat, now = self._beat, time.monotonic()
            if now - beat <= self.stall_seconds + self.tick:
                if stalled_since is not None:
                    # It beat again: the stall lasted until about that beat.
                    log.warning("event loop stall ended", seconds=round(beat - stalled_since, 2))
                    stalled_since = None
                continue
            if stalled_since is None:
                # Reported at the next tick: the CPU used meanwhile tells computing from waiting.
                stalled_since, noticed_at, cpu_at_notice = beat, now, self._loop_cpu()
                reported = False
                self.stalls += 1
            elif not reported:
                self._report(now - stalled_since, now - noticed_at, cpu_at_notice)
                reported = True

    def _loop_cpu(self) -> float | None:
        native_id = self._loop_thread.native_id
        return thread_cpu_seconds(native_id) if native_id is not None else None

    def _report(self, stalled: float, watched: float, cpu_at_notice: float | None) -> None:
        cpu_now = self._loop_cpu()
        share = None
        if cpu_now is not None and cpu_at_notice is not None and watched > 0:
            share = round((cpu_now - cpu_at_notice) / watched, 2)
        frame = sys._current_frames().get(self._loop_thread.ident or -1)
        stack = "".join(traceback.format_stack(frame, limit=STACK_FRAMES)) if frame else ""
        log.warning(
            "event loop stalled: no other work of this service moves meanwhile",
            stalled_seconds=round(stalled, 2),
            # Near 1: computing (see the stack); near 0: blocked in a call, or starved of CPU.
            loop_cpu_share=share,
            load_average=os.getloadavg()[0],
            stack=stack,
        )


@contextlib.contextmanager
def watching(stall_seconds: float = STALL_SECONDS) -> Iterator[StallWatch]:
    """Watch the running loop while the block runs."""
    watch = StallWatch(stall_seconds)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()
