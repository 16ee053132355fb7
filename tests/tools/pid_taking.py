"""A process started at a pid of the test's choosing (the kernel hands out the pid after
``/proc/sys/kernel/ns_last_pid``): a bystander that took a pid a killed process left free, as
any process may once the pid wrapped round (pid_max is 32768 on many machines). Needs root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
WHY_NOT = "needs root (writes /proc/sys/kernel/ns_last_pid)"
# Other processes on the machine start too and may take the pid first: try again.
TRIES = 200


def available() -> bool:
    return LAST_PID.exists() and os.access(LAST_PID, os.W_OK)


def started_at(pid: int, argv: list[str]) -> subprocess.Popen[bytes] | None:
    """``argv`` started with pid ``pid`` (free now), or None when other processes kept taking
    it first."""
    for _ in range(TRIES):
        LAST_PID.write_text(str(pid - 1))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None
