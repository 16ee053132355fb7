"""The API's artifact sweeper ends when the API stops, even when the cancel is lost in a pass.

nats-py swallows a cancel that arrives while it flushes, and Python 3.11's wait_for one that
arrives as its reply does: the pass returns as if never cancelled. The sweeper relied on the
cancel, so it slept and swept on, and the API's shutdown waited for it for ever (a CI rerun of
test_property_pipeline: "api did not stop within 30 s", the sweeper cancelled yet asleep).
Here the pass runs against a real NATS and the cancel is lost the way those two lose it."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.js import JetStreamContext

from jobrunner.common import artifactpurges
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names

SWEEP_SECONDS = 0.2


async def test_a_sweeper_whose_cancel_was_lost_in_a_pass_ends_on_its_stop(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sweep = artifactpurges.sweep
    in_pass = asyncio.Event()
    lost = 0

    async def sweep_losing_a_cancel(*args: object) -> None:
        nonlocal lost
        await real_sweep(*args)  # type: ignore[arg-type]
        in_pass.set()
        try:
            await asyncio.sleep(0.5)  # (the reply about to come)
        except asyncio.CancelledError:
            lost += 1  # as nats-py's _flush_pending and 3.11's wait_for do

    monkeypatch.setattr(artifactpurges, "sweep", sweep_losing_a_cancel)
    quick = msgspec.structs.replace(settings, artifact_purge_sweep_seconds=SWEEP_SECONDS)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(
        artifactpurges.sweep_forever(js, Names(settings.prefix), quick, stop)
    )
    await asyncio.wait_for(in_pass.wait(), 30)
    stop.set()  # as the API's shutdown does, before its cancel
    sweeper.cancel()
    done, _ = await asyncio.wait({sweeper}, timeout=10 * SWEEP_SECONDS + 5)
    if not done:
        sweeper.cancel()
    assert lost == 1
    assert done, "the sweeper swept on after the API's stop"
