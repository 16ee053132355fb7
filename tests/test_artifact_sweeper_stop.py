"""The API's artifact sweeper ends when the API stops, even when the cancel is lost in a pass.

nats-py swallows a cancel that arrives while it flushes, and Python 3.11's wait_for one that
arrives as its reply does: the pass returns as if never cancelled. The sweeper relied on the
cancel, so it slept and swept on, and the API's shutdown waited for it for ever (a CI rerun of
test_property_pipeline: "api did not stop within 30 s", the sweeper cancelled yet asleep).
Here the pass runs against a real NATS and the cancel is lost the way those two lose it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from litestar import Litestar
from nats.js import JetStreamContext

from jobrunner.common import artifactpurges
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.api import context

SWEEP_SECONDS = 0.2


class CancelLost:
    """``artifactpurges.sweep`` run for real, then a pause that swallows the first cancel
    arriving in it (as nats-py's ``_flush_pending`` and 3.11's ``wait_for`` do). Only the
    first: a later cancel (a failed test's clean-up) ends the sweeper."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.in_pass = asyncio.Event()
        self.lost = 0
        self._real_sweep: Callable[..., Awaitable[None]] = artifactpurges.sweep
        monkeypatch.setattr(artifactpurges, "sweep", self._sweep)

    async def _sweep(self, *args: object) -> None:
        await self._real_sweep(*args)
        self.in_pass.set()
        try:
            await asyncio.sleep(0.5)  # (the reply about to come)
        except asyncio.CancelledError:
            self.lost += 1
            if self.lost > 1:
                raise


async def test_a_sweeper_whose_cancel_was_lost_in_a_pass_ends_on_its_stop(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    losing = CancelLost(monkeypatch)
    quick = msgspec.structs.replace(settings, artifact_purge_sweep_seconds=SWEEP_SECONDS)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(
        artifactpurges.sweep_forever(js, Names(settings.prefix), quick, stop)
    )
    try:
        await asyncio.wait_for(losing.in_pass.wait(), 30)
        stop.set()  # as the API's shutdown does, before its cancel
        sweeper.cancel()
        done, _ = await asyncio.wait({sweeper}, timeout=10 * SWEEP_SECONDS + 5)
        assert losing.lost == 1
        assert done, "the sweeper swept on after the API's stop"
    finally:
        # A failed test leaves no sweeper running on the loop the later tests share.
        stop.set()
        sweeper.cancel()
        await asyncio.wait({sweeper}, timeout=10)


async def test_the_apis_shutdown_ends_although_its_sweepers_cancel_was_lost(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's own lifespan (real NATS and Postgres) sets the sweeper's stop: its exit ends."""
    losing = CancelLost(monkeypatch)
    quick = msgspec.structs.replace(settings, artifact_purge_sweep_seconds=SWEEP_SECONDS)
    running = context.lifespan(quick)(Litestar())
    await running.__aenter__()
    try:
        await asyncio.wait_for(losing.in_pass.wait(), 30)
    except BaseException:
        await running.__aexit__(None, None, None)
        raise
    # Bounded: past it, the exit is cancelled (the sweeper with it: a second cancel ends it).
    await asyncio.wait_for(running.__aexit__(None, None, None), 10)
    assert losing.lost == 1
