"""`jobrunner up`'s keeper stopped while it starts a server again: the start in flight is
finished before the keeper returns, so the server it started is the one `up` then stops.
Before, `up` cancelled the keeper: its start went on in its thread and left a server running
after `up` had ended (the review's exp5c); this pins what `up` now relies on (the `up`-level
test: test_up_server_dies.py)."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from jobrunner.embedded import keeper
from jobrunner.embedded.serverprocess import ServerProcess

pytestmark = pytest.mark.timeout(60)


class HeldStart(ServerProcess):
    """A real server process whose start again waits until the test lets it go on (as a
    Postgres replaying its WAL takes a while), saying when it waits."""

    def __init__(self, log_file: Path) -> None:
        self.port = 0
        super().__init__(
            "held",
            [sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(600)"],
            log_file,
            "ready",
        )
        self.starting_again = threading.Event()
        self.go_on = threading.Event()

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None:
            self.starting_again.set()
            self.go_on.wait(30)
        super().start(timeout)


async def test_a_stop_during_a_start_again_leaves_no_server_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeper, "CHECK_SECONDS", 0.05)
    server = HeldStart(tmp_path / "held.log")
    await asyncio.to_thread(server.start)
    stop = asyncio.Event()
    keeping = asyncio.create_task(keeper.keep_running([server], stop))
    try:
        server.kill()
        assert await asyncio.to_thread(server.starting_again.wait, 30)
        stop.set()
        server.go_on.set()
        await asyncio.wait_for(keeping, 30)
        assert server.running, "the start in flight was not finished before the keeper returned"
    finally:
        server.go_on.set()
        await asyncio.to_thread(server.stop)
    assert server.proc is not None
    assert server.proc.poll() is not None, "the server the keeper started is still running"
