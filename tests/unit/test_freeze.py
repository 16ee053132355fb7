"""The fault tests' freeze (tests/freeze.py): a process that was exiting when it was frozen
(a Postgres backend whose client just closed) counts as frozen once it is a zombie: it never
runs again. The freeze waited for a stop that never comes and failed the test after 30 s."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.freeze import freeze


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_process_that_exited_as_it_was_frozen_counts_as_frozen() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while _state(child.pid) != "Z":  # exited, not reaped: what SIGSTOP cannot stop
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        freeze(child.pid, within=2.0)
    finally:
        child.wait()
