"""The runner says it is alive: every ``runner_heartbeat_seconds`` it writes its id, host, pid
and the time to its key in the runners bucket (the bucket's TTL drops the key of a runner that
stopped writing), so ``GET /health`` can tell when no runner is left to run jobs."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError
from nats.js.kv import KeyValue

from jobrunner.common import eventstore, runnerpool, stopping
from jobrunner.common.settings import Settings
from jobrunner.common.slots import hostname
from jobrunner.contracts.events import utcnow
from jobrunner.contracts.names import Names

log = structlog.get_logger()


@contextlib.asynccontextmanager
async def heartbeat(
    js: JetStreamContext,
    names: Names,
    settings: Settings,
    runner_id: str,
    stop_deadline: Callable[[], stopping.Deadline],
) -> AsyncIterator[None]:
    """Beat while the block runs; on the way out the key is deleted (a runner that stops cleanly
    is gone from ``/health`` at once, not only after the TTL). The way out waits for the last
    beat and the delete within ``stop_deadline()`` (the runner's stop's, asked on the way out):
    with NATS frozen each would take a request's timeout, past the stop's end."""
    key = runnerpool.key_of(runner_id)
    host, pid = hostname(), os.getpid()
    kv: KeyValue | None = None

    ending = asyncio.Event()

    async def beat() -> None:
        nonlocal kv
        # Ends on ``ending`` as well as on cancel: nats-py swallows a cancel that arrives while
        # it flushes (Client._flush_pending catches CancelledError), and Python 3.11's
        # wait_for loses one that arrives as its reply does; kv.put then returns (an ack or its
        # timeout), and a loop that relied on the cancel would beat on and never let the runner
        # stop.
        while not ending.is_set():
            value = runnerpool.RunnerHeartbeat(runner_id, host, pid, utcnow())
            try:
                # Looked up here, not before: the runner creates the bucket as it starts.
                kv = kv or await js.key_value(names.runners_bucket)
                try:
                    await kv.put(key, msgspec.json.encode(value))
                except NoStreamResponseError:
                    # No bucket: it is kept in memory, and nats-server restarted. Made again,
                    # or every beat would fail until the next service start declares it, and
                    # ``GET /health`` could no longer tell that no runner is alive.
                    log.info("runner heartbeat bucket made again after a NATS restart")
                    await eventstore.create_runners_bucket(js, names, settings)
                    await kv.put(key, msgspec.json.encode(value))
            except Exception as exc:  # NATS away: the next beat tries again
                log.warning("runner heartbeat not written", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ending.wait(), settings.runner_heartbeat_seconds)

    task = asyncio.create_task(beat(), name="runner-heartbeat")
    try:
        yield
    finally:
        ending.set()
        task.cancel()
        deadline = stop_deadline()
        # Not awaited past the deadline: nats-py may swallow the cancel (see beat), and the
        # beat's put then waits for its timeout.
        # Their failures are no one's to report (NATS away: the key's TTL ends it).
        await stopping.wait_within(
            {task},
            deadline.left(),
            "runner heartbeat did not end on the stop: left running",
            cancel_left=True,
            errors_retrieved=True,
            level="warning",
        )
        if kv is not None:
            await stopping.wait_within(
                {asyncio.ensure_future(kv.delete(key))},
                deadline.left(),
                "runner heartbeat key not deleted: the bucket's TTL drops it",
                cancel_left=True,
                errors_retrieved=True,
                level="warning",
            )
