"""Lowering a child process's CPU priority, at both levels Linux schedules by (sched(7)).

Each service `jobrunner up` starts, and each tool a runner starts, is a session of its own. With
autogroups (on by default) the cores are shared first between sessions, each weighed by its
autogroup's niceness, written to ``/proc/<pid>/autogroup``; a thread's own niceness then only
orders the threads inside it. Without autogroups the thread niceness is what counts, and a new
thread takes its creator's, so setting the child's main thread while it starts passes it on to
every thread it makes. Both are set.

Without CAP_SYS_ADMIN the kernel takes one autogroup change per 100 ms, machine-wide, and refuses
the others with EAGAIN: callers try again after ``AUTOGROUP_RETRY_SECONDS``.
"""

from __future__ import annotations

import os
from pathlib import Path

# The kernel's rate limit on unprivileged autogroup changes is one per HZ/10.
AUTOGROUP_RETRY_SECONDS = 0.11


def nicer_than_this_process(by: int) -> int:
    """The niceness ``by`` above this process's, within the kernel's range."""
    return min(os.getpriority(os.PRIO_PROCESS, 0) + by, 19)


def set_thread_niceness(pid: int, niceness: int) -> None:
    """The niceness of ``pid``'s main thread; raises OSError when it is gone or not allowed."""
    os.setpriority(os.PRIO_PROCESS, pid, niceness)


def set_autogroup_niceness(pid: int, niceness: int) -> bool:
    """True when set, or when it cannot be (no autogroups, the process gone); False when the
    kernel's rate limit refused it for now."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{niceness}\n")
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def autogroup_niceness(pid: int) -> int | None:
    """The niceness of a process's autogroup; None without autogroups (or the process gone)."""
    try:
        # "/autogroup-123 nice 10"
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None
