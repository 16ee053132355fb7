"""A runner run in the test's own process (``Runner.run``) on a connection of its own, its log
captured: for the tests that stop it while NATS is frozen and then look at what it left."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.services.runner.service import Runner


class RunningRunner:
    """A runner running on ``nc`` until ``stop`` is set; what it logged so far in ``logs``."""

    def __init__(
        self,
        nc: NATS,
        stop: asyncio.Event,
        task: asyncio.Task[None],
        logs: list[MutableMapping[str, Any]],
    ) -> None:
        self.nc = nc
        self.stop = stop
        self.task = task
        self.logs = logs


@contextlib.asynccontextmanager
async def running_runner(settings: Settings) -> AsyncIterator[RunningRunner]:
    """A runner that has started, its log captured; stopped (or cancelled) and its
    connection closed after."""
    nc = await eventstore.connect(settings, "runner")
    stop = asyncio.Event()
    try:
        with capture_logs() as logs:
            made = Runner(settings, nc)
            # The streams and buckets are made by run_runner before Runner.run (as a service
            # starts): a runner run on its own needs them made first.
            await eventstore.ensure_topology(made.js, made.names, settings)
            running = asyncio.create_task(made.run(stop))
            runner = RunningRunner(nc, stop, running, logs)
            try:
                async with asyncio.timeout(60):
                    while not any(e["event"] == "runner started" for e in logs):
                        assert not runner.task.done()
                        await asyncio.sleep(0.05)
                yield runner
            finally:
                stop.set()
                if not runner.task.done():
                    runner.task.cancel()
                    await asyncio.wait({runner.task}, timeout=30)
    finally:
        await eventstore.close(nc)
