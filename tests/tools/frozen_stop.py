"""A service stopped as `jobrunner up` stops it (SIGTERM) while NATS and Postgres are frozen:
its start as a process of its own, the freeze around the stop, and the bounds it is held to."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from jobrunner.common.settings import Settings
from jobrunner.supervisor import STARTED_RE
from tests.freeze import freeze, thaw
from tests.tools.runners import REPO, runner_env

# The services' stop_seconds here (15 s by default): the test's stops are short, and the
# figures before the deadline (2.6 s to 12.5 s for an idle service) are past it.
STOP_SECONDS = 1.5
# What a process takes past its stop's deadline to exit (the interpreter's own end, threads
# joined) on a loaded machine: the test sees a stop past the deadline by more as a failure.
EXIT_SECONDS = 2.5
# How long the test waits for an exit at most: long enough to measure a stop that overruns.
PATIENCE = 60.0


def started(metrics_address: str) -> bool:
    """Has the service at ``metrics_address`` said it started (as the supervisor reads it)?"""
    try:
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=2) as response:
            return bool(STARTED_RE.search(response.read().decode(errors="replace")))
    except OSError:
        return False


async def started_service(
    service: str, settings: Settings, tmp_path: Path
) -> subprocess.Popen[bytes]:
    """``jobrunner <service>`` running with ``settings``, once it has started; its output in
    ``tmp_path/<service>.log``. Killed if it does not start."""
    log_file = tmp_path / f"{service}.log"
    with log_file.open("ab") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting is quick
            [sys.executable, "-m", "jobrunner.cli", service],
            cwd=REPO,
            env=runner_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with asyncio.timeout(90):
            while not await asyncio.to_thread(started, settings.metrics_address):
                assert proc.poll() is None, log_file.read_text()
                await asyncio.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


async def stopped_frozen(
    proc: subprocess.Popen[bytes], frozen: list[int], frozen_before_stop: float = 0.0
) -> tuple[float, int | None]:
    """``proc`` sent SIGTERM with every one of ``frozen`` frozen (thawed after, whatever
    happens), ``frozen_before_stop`` seconds after the freeze: how long it took to exit, and
    its exit code (None: not within ``PATIENCE``)."""
    with _thawed_after(frozen):
        for pid in frozen:
            # A Postgres backend listed a moment ago may have ended since: nothing to freeze.
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                freeze(pid)
        await asyncio.sleep(frozen_before_stop)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, PATIENCE)
        except subprocess.TimeoutExpired:
            code = None
        return time.monotonic() - began, code


@contextlib.contextmanager
def _thawed_after(pids: list[int]) -> Iterator[None]:
    try:
        yield
    finally:
        thaw(*pids)
