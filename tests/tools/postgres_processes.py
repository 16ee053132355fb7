"""A test's own Postgres as processes, for freezing or signalling all of it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import TracebackType

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


class TimedFreeze:
    """All of ``server`` frozen at ``freeze()`` (called from within the code under test, when
    it gets to where the fault belongs) and thawed ``seconds`` later by a timer, or at the
    end of the ``with`` block at the latest."""

    def __init__(self, server: EmbeddedPostgres, seconds: float) -> None:
        self._server = server
        self.pids: list[int] = []
        self._thawed = threading.Event()
        self._timer = threading.Timer(seconds, self._thaw_now)

    def freeze(self) -> None:
        assert not self.pids, (
            "a TimedFreeze freezes once: its timer thaws only the first freeze's processes"
        )
        self.pids.extend(freeze_postgres(self._server))
        self._timer.start()

    def _thaw_now(self) -> None:
        # Thawed first: whoever sees ``thawed`` may count on the server running.
        thaw(self.pids)
        self._thawed.set()

    @property
    def thawed(self) -> bool:
        """Whether the timer has thawed the server already."""
        return self._thawed.is_set()

    def __enter__(self) -> TimedFreeze:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        thaw(self.pids)
