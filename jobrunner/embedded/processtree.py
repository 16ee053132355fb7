"""A server's child processes, read from Linux's /proc: Postgres' backends each lead a process
group of their own, so the group of the server's main process does not reach them."""

from __future__ import annotations

import time
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)": the comm may hold spaces, not a
    closing parenthesis. None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rsplit(")", 1)[1].split()


def children_of(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` now (none where there is no /proc)."""
    children = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


def ended(pid: int) -> bool:
    """Gone, or a zombie: a zombie holds no memory any more (shared memory included), only
    its exit status, until whoever adopted it reaps it."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


def wait_ended(pids: list[int], timeout: float) -> list[int]:
    """Until every one of ``pids`` has ended (``ended``), ``timeout`` seconds at most; the ones
    still running then."""
    deadline = time.monotonic() + timeout
    running = [pid for pid in pids if not ended(pid)]
    while running and time.monotonic() < deadline:
        time.sleep(0.01)
        running = [pid for pid in running if not ended(pid)]
    return running
