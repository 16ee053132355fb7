"""A test's own Postgres as processes, for freezing or signalling all of it."""

from __future__ import annotations

import contextlib
from pathlib import Path

from jobrunner.embedded.postgres import EmbeddedPostgres


def postgres_pids(server: EmbeddedPostgres) -> list[int]:
    """The postmaster and every process it started (each backend leads a group of its own)."""
    assert server.proc is not None
    postmaster = server.proc.pid
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": the comm may hold spaces, not a closing parenthesis.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(stat.parent.name))
    return [postmaster, *children]
