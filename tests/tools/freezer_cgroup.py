"""Processes held in the kernel's refrigerator (cgroup v1 freezer): the one fault that makes
SIGKILL wait, as a long disk wait does. A frozen task sits in uninterruptible sleep (state D);
a SIGKILL sent meanwhile stays pending and takes effect at the thaw. Needs root and the v1
freezer hierarchy mounted (``/sys/fs/cgroup/freezer``); ``available`` says so."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

FREEZER = Path("/sys/fs/cgroup/freezer")
WHY_NOT = "needs root and the cgroup v1 freezer at /sys/fs/cgroup/freezer"


def available() -> bool:
    return (FREEZER / "cgroup.procs").exists() and os.access(FREEZER, os.W_OK)


class Refrigerator:
    def __init__(self, group: Path) -> None:
        self.group = group

    def thaw(self) -> None:
        (self.group / "freezer.state").write_text("THAWED")


@contextlib.contextmanager
def frozen(pids: list[int], within: float = 30.0) -> Iterator[Refrigerator]:
    """``pids`` frozen (each whole process) until ``Refrigerator.thaw`` or the block's end."""
    group = FREEZER / f"jobrunner-test-{uuid.uuid4().hex[:12]}"
    group.mkdir()
    fridge = Refrigerator(group)
    try:
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
        (group / "freezer.state").write_text("FROZEN")
        deadline = time.monotonic() + within
        while (group / "freezer.state").read_text().strip() != "FROZEN":
            assert time.monotonic() < deadline, f"{pids} did not freeze"
            time.sleep(0.01)  # the kernel freezes task by task
        yield fridge
    finally:
        fridge.thaw()
        # Whatever still lives goes back to the root group, so that the group can be removed.
        for member in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (FREEZER / "cgroup.procs").write_text(member)
        deadline = time.monotonic() + within
        while True:
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # a task on its way out still counts as a member
