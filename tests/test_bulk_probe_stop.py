"""A runner's exit ends while its bulk connection is stalled, even when the probe's cancel is lost.

The bulk lane's probe sends a message to itself on the stalled connection until it comes back.
nats-py swallows a cancel that arrives while it flushes (``_flush_pending``, which a publish
calls), and 3.11's wait_for one that comes with an outcome: a probe that relied on its cancel
went on, and the runner's exit (``BulkLane.close``) waited for as long as the stall lasted, for
ever with NATS gone. Here the server is frozen for real, the probe's real publish goes out, and
the cancel is lost as it returns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner import bulk
from jobrunner.services.runner.bulk import BulkLane
from tests.freeze import frozen
from tests.lostcancel import CancelLostInAPause

PROBE_SECONDS = 0.5  # the lane's timeout: how long one probe waits for its message


@pytest.fixture
async def frozen_nc(own_nats: EmbeddedNats) -> AsyncIterator[NATS]:
    """A connection to a server frozen from now on (thawed at the end)."""
    assert own_nats.proc is not None
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1, connect_timeout=0.5)
    try:
        with frozen(own_nats.proc.pid):
            yield nc
    finally:
        await nc.close()


async def _stalled_lane(nc: NATS) -> BulkLane:
    lane = BulkLane(nc, PROBE_SECONDS)
    # Not stored in time: the lane goes out of use and its probe starts.
    assert not await lane.publish("bulk.probe.test", b"x", "probe-1")
    assert lane._probe is not None
    return lane


async def _finish(lane: BulkLane, *closing: asyncio.Task[None]) -> None:
    """No probe left on the loop the later tests share: a second cancel ends one whose first
    was lost (a failed test), a deaf publish ends by its own hold."""
    probe = lane._probe
    assert probe is not None
    for task in (probe, *closing):
        task.cancel()
    await asyncio.wait({probe, *closing}, timeout=30)


def _probe_publishes(nc: NATS, publish: Callable[..., Awaitable[None]]) -> None:
    """``publish`` stands in for the probe's publishes (the only ones without a reply subject:
    every JetStream publish has one), the others go out as they are."""
    real_publish = nc.publish

    async def publishing(subject: str, payload: bytes = b"", reply: str = "", **kw: Any) -> None:
        if reply:
            await real_publish(subject, payload, reply, **kw)
        else:
            await publish(real_publish, subject, payload)

    nc.publish = publishing  # type: ignore[method-assign]


async def test_a_probe_whose_cancel_was_lost_in_its_publish_ends_on_close(frozen_nc: NATS) -> None:
    """The runner's exit ends within seconds although the probe's publish lost its cancel."""
    losing = CancelLostInAPause()

    async def publish_losing_a_cancel(
        real: Callable[..., Awaitable[None]], subject: str, payload: bytes
    ) -> None:
        await real(subject, payload)
        await losing.pause(30)  # until the cancel comes: it is lost, the publish returns

    _probe_publishes(frozen_nc, publish_losing_a_cancel)
    lane = await _stalled_lane(frozen_nc)
    await asyncio.wait_for(losing.reached.wait(), 30)  # the probe's publish is under way
    closing = asyncio.create_task(lane.close())  # the runner's exit
    try:
        done, _ = await asyncio.wait({closing}, timeout=10)
        assert losing.lost == 1
        assert done, "the runner's exit waited for the stalled bulk connection to answer"
    finally:
        await _finish(lane, closing)


@pytest.mark.parametrize(
    ("publish_holds", "ends"),
    [(1.5, True), (7.0, False)],
    ids=["within-the-bound", "past-the-bound"],
)
async def test_a_probe_deaf_to_its_stop_holds_the_close_at_most_its_bound(
    frozen_nc: NATS, monkeypatch: pytest.MonkeyPatch, publish_holds: float, ends: bool
) -> None:
    """The close's bound (the probe's timeout plus a margin, 3.5 s here): a publish that ignores
    every cancel and holds 1.5 s is waited for; one that holds 7 s is left, said in the log,
    and the runner's exit goes on."""
    monkeypatch.setattr(bulk, "PROBE_STOP_MARGIN_SECONDS", 3.0)
    publishing = asyncio.Event()

    async def publish_deaf_to_cancels(
        real: Callable[..., Awaitable[None]], subject: str, payload: bytes
    ) -> None:
        publishing.set()
        await real(subject, payload)
        held = asyncio.ensure_future(asyncio.sleep(publish_holds))
        while not held.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({held})

    _probe_publishes(frozen_nc, publish_deaf_to_cancels)
    lane = await _stalled_lane(frozen_nc)
    await asyncio.wait_for(publishing.wait(), 30)
    with capture_logs() as logs:
        closing = asyncio.create_task(lane.close())
        done, _ = await asyncio.wait({closing}, timeout=30)
    assert done, "the close waited past its bound"
    assert lane._probe is not None
    assert lane._probe.done() == ends
    left = [e for e in logs if e["event"] == "a loop did not end on its stop: left running"]
    assert bool(left) != ends
    await _finish(lane)
