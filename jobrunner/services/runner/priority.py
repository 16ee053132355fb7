"""Tools at a lower CPU priority than the services (``tool_nice``): whatever a tool does, the
control plane (runner, API, NATS) keeps the cores it needs to carry other jobs' lines.

Every tool is a session of its own (``start_new_session``), and with Linux's autogroups (sched(7),
on by default) the cores are shared first between sessions, each weighed by its autogroup's
niceness, written to ``/proc/<pid>/autogroup``; a thread's own niceness then only orders the
threads inside the tool. So a flooding tool had a share as large as the whole runner's or
NATS's. Both are set: the thread niceness (what counts without autogroups; the tool's threads
inherit it) at once, the autogroup's as soon as the kernel takes it.

The kernel takes an unprivileged autogroup change once per 100 ms, machine-wide (EAGAIN
otherwise): the changes it refuses wait in one queue, one try per 100 ms, so a job's start never
waits for it; a tool that has exited meanwhile is skipped.
"""

from __future__ import annotations

import asyncio
import collections
import os
from pathlib import Path

import structlog

log = structlog.get_logger()

# The kernel's rate limit on unprivileged autogroup changes is one per HZ/10.
RETRY_SECONDS = 0.11
# Tries per tool before giving up on its autogroup (another process taking every slot).
TRIES = 20


def autogroup_niceness(pid: int) -> int | None:
    """The niceness of a process's autogroup; None without autogroups (or the process gone)."""
    try:
        # "/autogroup-123 nice 10"
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _write_autogroup(pid: int, niceness: int) -> bool:
    """True when set or no longer possible (no autogroups, process gone); False on EAGAIN."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{niceness}\n")
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


class ToolPriority:
    """Lowers each tool's priority right after its start, ``by`` below the runner's."""

    def __init__(self, by: int) -> None:
        self.by = by
        self._waiting: collections.deque[tuple[asyncio.subprocess.Process, int]] = (
            collections.deque()
        )
        self._task: asyncio.Task[None] | None = None

    def lower(self, proc: asyncio.subprocess.Process) -> None:
        if not self.by:
            return
        niceness = min(os.getpriority(os.PRIO_PROCESS, 0) + self.by, 19)
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, niceness)
        except OSError:
            return  # gone already (its exit is seen and handled)
        if self._waiting or not _write_autogroup(proc.pid, niceness):
            self._waiting.append((proc, niceness))
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        while self._waiting:
            proc, niceness = self._waiting[0]
            for _ in range(TRIES):
                # Not reaped yet, so its pid is still its own: checked before each write.
                if proc.returncode is not None or _write_autogroup(proc.pid, niceness):
                    break
                await asyncio.sleep(RETRY_SECONDS)
            else:
                log.info("tool autogroup priority not lowered", pid=proc.pid)
            self._waiting.popleft()
