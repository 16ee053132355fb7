"""A test's own Postgres as processes, for freezing or signalling all of it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from jobrunner.embedded import processtree
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests.freeze import freeze
from tests.freeze import thaw as thaw_processes


def postgres_pids(server: EmbeddedPostgres) -> list[int]:
    """The postmaster and every process it started (each backend leads a group of its own)."""
    assert server.proc is not None
    return [server.proc.pid, *processtree.children_of(server.proc.pid)]


def freeze_postgres(server: EmbeddedPostgres) -> list[int]:
    """SIGSTOP all of ``server`` (connects then hang: the kernel still accepts them) and return
    the processes stopped, for ``thaw``. The postmaster first, so that it starts no backend in
    between; a backend that ended between the listing and its freeze is passed over."""
    pids = postgres_pids(server)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            freeze(pid)
    return pids


def thaw(pids: list[int]) -> None:
    """SIGCONT what ``freeze_postgres`` stopped; one that ended meanwhile is passed over."""
    thaw_processes(*pids)


@contextlib.contextmanager
def frozen_postgres(server: EmbeddedPostgres) -> Iterator[None]:
    """All of ``server`` frozen (``freeze_postgres``) while the block runs, thawed at its end."""
    pids = freeze_postgres(server)
    try:
        yield
    finally:
        thaw(pids)
