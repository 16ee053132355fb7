"""The runner's stop unsubscribes its cancel and seal subscriptions within
``UNSUBSCRIBE_STOP_SECONDS``, even when nats-py cannot take the UNSUB (NATS frozen while much
was being sent: see tests/tools/clogged_nats.py). Its stop waited for the thaw."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import nats
import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.board import LockBoard
from tests.tools.clogged_nats import (
    BOUND,
    STOP_SECONDS,
    THAWED_EITHER_SIDE_OF_THE_BOUND,
    ends_by_its_deadline,
    frozen_and_clogged,
)
from tests.tools.running_runner import running_runner

NOT_UNSUBSCRIBED = (
    "the runner's cancel and seal subscriptions not unsubscribed: the close ends them"
)


@THAWED_EITHER_SIDE_OF_THE_BOUND
async def test_the_runners_stop_unsubscribes_within_the_bound(
    settings: Settings,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    frozen_for: float,
    unsubscribed: bool,
) -> None:
    """NATS thawed 1 s into the stop: unsubscribed, nothing said. Thawed 5 s into it, past the
    3 s bound: left to the close, said in the log; the stop used to wait for the thaw."""
    monkeypatch.setattr(eventstore, "UNSUBSCRIBE_STOP_SECONDS", BOUND)
    private = msgspec.structs.replace(settings, nats_url=own_nats.url)
    async with running_runner(private) as runner:
        async with frozen_and_clogged(own_nats, runner.nc, thawed_after=frozen_for):
            runner.stop.set()
            await asyncio.wait_for(asyncio.shield(runner.task), 60)
        said = [e for e in runner.logs if e["event"] == NOT_UNSUBSCRIBED]
        assert len(said) == (0 if unsubscribed else 1), said


async def test_the_runners_stop_ends_by_its_deadline_with_nats_frozen_throughout(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS frozen, its connection clogged, and not thawed until the stop is over: the
    runner's run ends within its stop's deadline, not at the thaw."""
    private = msgspec.structs.replace(settings, nats_url=own_nats.url, stop_seconds=STOP_SECONDS)
    async with running_runner(private) as runner, frozen_and_clogged(own_nats, runner.nc):
        runner.stop.set()
        await ends_by_its_deadline(asyncio.shield(runner.task))


async def _nothing(value: object) -> None:
    pass


async def test_the_lock_boards_watch_ends_on_its_stop_with_nats_frozen(
    own_nats: EmbeddedNats,
) -> None:
    """NATS frozen and the connection clogged, then the board's stop: its watch ends on the stop
    alone (no cancel), within keywatch's bound, NATS still frozen. nats-py's
    ``KeyWatcher.stop``, which it called, waited for its UNSUB until the thaw."""
    nc = await nats.connect(own_nats.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket=f"b{uuid.uuid4().hex[:8]}")
        board, stop = LockBoard(), asyncio.Event()
        watching = asyncio.create_task(board.watch(kv, stop, _nothing))
        try:
            await asyncio.wait_for(board.ready.wait(), 10)
            async with frozen_and_clogged(own_nats, nc):
                stop.set()
                await ends_by_its_deadline(asyncio.shield(watching))
        finally:
            if not watching.done():
                watching.cancel()
                await asyncio.wait({watching}, timeout=10)
    finally:
        await nc.close()
