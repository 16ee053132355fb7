"""The runner's stop unsubscribes its cancel and seal subscriptions within
``UNSUBSCRIBE_STOP_SECONDS``, even when nats-py cannot take the UNSUB (NATS frozen while much
was being sent: see tests/test_api_unsubscribe_stop_frozen.py). Its stop waited for the thaw."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.service import Runner
from tests.freeze import freeze
from tests.test_api_unsubscribe_stop_frozen import (
    BOUND,
    STOP_ENDS_WITHIN,
    STOP_GIVEN_UP_AFTER,
    STOP_SECONDS,
    clogged,
)

NOT_UNSUBSCRIBED = (
    "the runner's cancel and seal subscriptions not unsubscribed: the close ends them"
)


@pytest.mark.parametrize(
    ("frozen_for", "unsubscribed"),
    [(BOUND - 2, True), (BOUND + 2, False)],
    ids=["thawed-within-the-bound", "thawed-past-the-bound"],
)
async def test_the_runners_stop_unsubscribes_within_the_bound(
    settings: Settings,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    frozen_for: float,
    unsubscribed: bool,
) -> None:
    """NATS thawed 1 s into the stop: unsubscribed, nothing said. Thawed 5 s into it, past the
    3 s bound: left to the close, said in the log; the stop used to wait for the thaw."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    monkeypatch.setattr(eventstore, "UNSUBSCRIBE_STOP_SECONDS", BOUND)
    private = msgspec.structs.replace(settings, nats_url=own_nats.url)
    nc = await eventstore.connect(private, "runner")
    stop = asyncio.Event()
    running: asyncio.Task[None] | None = None
    frozen = False
    thaw: asyncio.TimerHandle | None = None
    try:
        with capture_logs() as logs:
            running = asyncio.create_task(Runner(private, nc).run(stop))
            async with asyncio.timeout(60):
                while not any(e["event"] == "runner started" for e in logs):
                    assert not running.done()
                    await asyncio.sleep(0.05)
            freeze(pid)
            frozen = True
            await clogged(nc)
            thaw = asyncio.get_running_loop().call_later(frozen_for, os.kill, pid, signal.SIGCONT)
            stop.set()
            await asyncio.wait_for(running, 60)
        said = [e for e in logs if e["event"] == NOT_UNSUBSCRIBED]
        assert len(said) == (0 if unsubscribed else 1), said
    finally:
        if thaw is not None:
            thaw.cancel()
        if frozen:
            os.kill(pid, signal.SIGCONT)
        stop.set()
        if running is not None and not running.done():
            running.cancel()
            await asyncio.wait({running}, timeout=30)
        await eventstore.close(nc)


async def test_the_runners_stop_ends_by_its_deadline_with_nats_frozen_throughout(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS frozen, its connection clogged, and not thawed until the stop is over: the
    runner's run ends within its stop's deadline, not at the thaw."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    private = msgspec.structs.replace(settings, nats_url=own_nats.url, stop_seconds=STOP_SECONDS)
    nc = await eventstore.connect(private, "runner")
    stop = asyncio.Event()
    running: asyncio.Task[None] | None = None
    frozen = False
    try:
        with capture_logs() as logs:
            running = asyncio.create_task(Runner(private, nc).run(stop))
            async with asyncio.timeout(60):
                while not any(e["event"] == "runner started" for e in logs):
                    assert not running.done()
                    await asyncio.sleep(0.05)
        freeze(pid)
        frozen = True
        await clogged(nc)
        stop.set()
        began = time.monotonic()
        await asyncio.wait_for(asyncio.shield(running), STOP_GIVEN_UP_AFTER)
        took = time.monotonic() - began
        print(f"stop took {took:.2f} s")
        assert took < STOP_ENDS_WITHIN
    finally:
        if frozen:
            os.kill(pid, signal.SIGCONT)
        stop.set()
        if running is not None and not running.done():
            running.cancel()
            await asyncio.wait({running}, timeout=30)
        await eventstore.close(nc)
