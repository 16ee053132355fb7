"""Tools at a lower CPU priority than the services (``tool_nice``): whatever a tool does, the
control plane (runner, API, NATS) keeps the cores it needs to carry other jobs' lines.

Every tool is a session of its own (``start_new_session``): without this, a flooding tool had a
share of the cores as large as the whole runner's or NATS's (``common.cpupriority`` says why).
Its thread niceness is set at once; its autogroup's as soon as the kernel takes it: the changes
it refuses for now wait in one queue, one try per ``AUTOGROUP_RETRY_SECONDS``, so a job's start
never waits for it; a tool that has exited meanwhile is skipped.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

import structlog

from jobrunner.common.cpupriority import (
    AUTOGROUP_RETRY_SECONDS,
    nicer_than_this_process,
    set_autogroup_niceness,
    set_thread_niceness,
)

log = structlog.get_logger()

# Tries per tool before giving up on its autogroup (another process taking every slot).
TRIES = 20


class Started(Protocol):
    """A started tool: its pid, and its exit code once it was reaped (None before)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...


class ToolPriority:
    """Lowers each tool's priority right after its start, ``by`` below the runner's."""

    def __init__(self, by: int) -> None:
        self.by = by
        self._waiting: collections.deque[tuple[Started, int]] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def lower(self, proc: Started) -> None:
        if not self.by:
            return
        niceness = nicer_than_this_process(self.by)
        try:
            set_thread_niceness(proc.pid, niceness)
        except OSError:
            return  # gone already (its exit is seen and handled)
        if self._waiting or not set_autogroup_niceness(proc.pid, niceness):
            self._waiting.append((proc, niceness))
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        while self._waiting:
            proc, niceness = self._waiting[0]
            for _ in range(TRIES):
                # Not reaped yet, so its pid is still its own: checked before each write.
                if proc.returncode is not None or set_autogroup_niceness(proc.pid, niceness):
                    break
                await asyncio.sleep(AUTOGROUP_RETRY_SECONDS)
            else:
                log.info("tool autogroup priority not lowered", pid=proc.pid)
            self._waiting.popleft()
