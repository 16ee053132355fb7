"""The runner's lock board: its watch of the lock bucket ends when the runner stops."""

from __future__ import annotations

import asyncio

import msgspec
import nats

from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotValue
from jobrunner.contracts.names import Names
from jobrunner.services.runner.board import LockBoard


async def _nothing(_: SlotValue) -> None:
    pass


async def test_the_watch_ends_on_stop_after_its_connection_closed(settings: Settings) -> None:
    """Closed first (a shutdown closing the connection), the watch still ends on ``stop``: the
    watcher's own stop fails with the connection gone and must not leave the iteration waiting."""
    nc = await nats.connect(settings.nats_url)
    try:
        kv = await nc.jetstream().create_key_value(bucket=Names(settings.prefix).locks_bucket)
        value = SlotValue(job_id="j1", phase="held", job_type="t")
        await kv.put("slot.a", msgspec.json.encode(value))
        board, stop = LockBoard(), asyncio.Event()
        watching = asyncio.create_task(board.watch(kv, stop, _nothing))
        await board.ready.wait()  # the bucket's state replayed
        assert "slot.a" in board.slots
    finally:
        await nc.close()
    stop.set()
    # A guard against a hang only: the watch ends at once. Not ``wait_for``, whose cancel at the
    # timeout the old watch took for a failure and ended on.
    done, _ = await asyncio.wait({watching}, timeout=30)
    try:
        assert watching in done, "the watch did not end on stop"
        assert watching.exception() is None
    finally:
        watching.cancel()
