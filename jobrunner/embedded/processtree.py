"""A server's processes, found in Linux's /proc, and ended through pidfds.

Postgres' backends each lead a process group of their own, so a kill of the postmaster's group
does not reach them; and once the postmaster has died they are init's children, no longer its.
What ties every one of them to the server is its System V shared memory segment, the very thing
that keeps the next start out while any process still has it attached ("pre-existing shared
memory block ... is still in use"): they are found by it (``attached_to``).

They are signalled and waited for through a pidfd opened while the process was seen attached
(``hold``), never by pid: between a look at /proc and a kill, a process that ended may be
reaped (by init, once its parent is gone) and its pid taken by an unrelated process (pid_max is
32768 on many machines); a pidfd names the one process it was opened for, and a signal through
it never reaches another. (pidfds: Linux 5.3.)
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


class Segment(NamedTuple):
    """A System V shared memory segment: its key and its id (``ipcs -m``)."""

    key: int
    shmid: int


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)": the comm may hold spaces, not a
    closing parenthesis. None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rsplit(")", 1)[1].split()


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").glob("[0-9]*")]


def children_of(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` now (none where there is no /proc)."""
    children = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields is not None and int(fields[1]) == parent:
            children.append(pid)
    return children


def attaches(pid: int, segment: Segment) -> bool:
    """Whether ``pid`` has ``segment`` attached now: a line of its /proc/<pid>/maps names the
    segment's key (``/SYSV<key in hex>``) with its id in the inode column. A zombie has no
    mappings left; a process whose maps we may not read is not ours to kill."""
    name = f"/SYSV{segment.key:08x}"
    shmid = str(segment.shmid)
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and fields[4] == shmid and fields[5] == name:
                    return True
    except OSError:
        return False
    return False


def attached_to(segment: Segment) -> list[int]:
    """The processes that have ``segment`` attached now (none where there is no /proc)."""
    return [pid for pid in _pids() if attaches(pid, segment)]


def hold(pid: int, still: Callable[[int], bool]) -> int | None:
    """A pidfd for ``pid`` if ``still(pid)`` is true once it is open: checked after the open,
    the pidfd names the process that passed the check, not one that took its pid a moment
    before. None when the process has ended or no longer passes."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if still(pid):
        return pidfd
    os.close(pidfd)
    return None


def wait_ended(held: dict[int, int], timeout: float) -> list[int]:
    """Until every held process (pid: pidfd) has ended, ``timeout`` seconds at most; the pids
    of the ones still running then. Ended is exited: a zombie holds no memory any more (shared
    memory included), only its exit status, until its parent reaps it."""
    deadline = time.monotonic() + timeout
    by_fd = {pidfd: pid for pid, pidfd in held.items()}
    poller = select.poll()
    for pidfd in by_fd:
        poller.register(pidfd, select.POLLIN)  # readable once the process has exited
    while by_fd:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for pidfd, _ in poller.poll(math.ceil(left * 1000)):
            poller.unregister(pidfd)
            del by_fd[pidfd]
    return sorted(by_fd.values())


def kill_attached(segment: Segment, timeout: float) -> list[int]:
    """SIGKILL every process attached to ``segment`` and wait for it, again and again until
    none is attached, ``timeout`` seconds at most; the pids still running then. Looking again
    catches a process forked while the first look read /proc (a fork already under way in the
    kernel finishes even after a SIGSTOP)."""
    deadline = time.monotonic() + timeout
    while True:
        held: dict[int, int] = {}
        try:
            for pid in attached_to(segment):
                pidfd = hold(pid, lambda pid: attaches(pid, segment))
                if pidfd is not None:
                    held[pid] = pidfd
            if not held:
                return []
            for pidfd in held.values():
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            running = wait_ended(held, deadline - time.monotonic())
        finally:
            for pidfd in held.values():
                os.close(pidfd)
        if running:
            return running
