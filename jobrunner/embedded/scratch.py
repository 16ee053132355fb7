"""Throwaway state directories for tests and benchmarks, removed when done.

A test run's embedded Postgres and NATS can hold gigabytes (WAL, a million-line log). A run that
is killed never reaches its cleanup, so each directory records its owner's pid, and the next run
removes the directories whose owner is gone: a disk never fills up with dead runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OWNER_FILE = ".owner-pid"


def _owner_alive(directory: Path) -> bool:
    try:
        pid = int((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):
        # No owner recorded: either being created right now or not ours to judge. Keep it.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_servers_in(directory: Path) -> None:
    """A killed run's nats-server or Postgres outlives it (they run in their own sessions):
    stop every process whose command line names the directory, or whose environment does (the
    services a test started, configured by ``JOBRUNNER_*`` variables pointing into it)."""
    named = f"{directory}/".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            if named in (proc / "cmdline").read_bytes().replace(b"\0", b" ") or named in (
                proc / "environ"
            ).read_bytes().replace(b"\0", b" "):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read


def sweep_stale(prefix: str) -> None:
    """Remove the scratch directories with this prefix whose owning process has exited."""
    for directory in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        if directory.is_dir() and not _owner_alive(directory):
            _kill_servers_in(directory)
            shutil.rmtree(directory, ignore_errors=True)


def new_scratch_dir(prefix: str) -> Path:
    """A fresh directory the ``postgres`` user can enter; the caller removes it when done."""
    sweep_stale(prefix)
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    (directory / OWNER_FILE).write_text(str(os.getpid()))
    # When we are root, Postgres runs as the postgres user, who must reach a data dir below.
    directory.chmod(0o755)
    return directory


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory, deleted with everything in it on exit."""
    directory = new_scratch_dir(prefix)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
