"""After a stall of the bulk connection, short or long, the lane is in use again and its
connection still reads.

The probe used to flush (a PING) with a timeout: one that timed out left its cancelled future
in nats-py's queue of PONG waiters, and the PONG that came after the thaw failed in nats-py's
read loop (``InvalidStateError``), which then read nothing more: the lane never answered again
and no ack on that connection arrived, until nats-py's own pings found it stale."""

from __future__ import annotations

import asyncio

import nats
import pytest

from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.bulk import BulkLane
from tests.freeze import frozen

LANE_TIMEOUT = 1.0


@pytest.mark.parametrize(
    "frozen_for",
    [LANE_TIMEOUT / 2, LANE_TIMEOUT * 2.5],
    ids=["shorter-than-the-lane-timeout", "longer-than-the-lane-timeout"],
)
async def test_after_a_freeze_the_lane_answers_and_its_connection_reads(
    own_nats: EmbeddedNats, frozen_for: float
) -> None:
    """The lane is usable again after the thaw and a message sent on its connection comes back."""
    assert own_nats.proc is not None
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1)
    lane = BulkLane(nc, LANE_TIMEOUT)
    try:
        with frozen(own_nats.proc.pid):
            lane._out_of_use(TimeoutError("the stall"))  # as a publish not stored in time
            assert not lane.usable()
            await asyncio.sleep(frozen_for)  # the fault's length, not a wait for a condition
        assert lane._probe is not None
        await asyncio.wait_for(asyncio.shield(lane._probe), 20)  # it ends once answered
        assert lane.usable(), "the lane stayed out of use after the thaw"
        assert nc._reading_task is not None
        assert not nc._reading_task.done(), "the connection's read loop ended"
        heard = asyncio.Event()

        async def on_message(msg: object) -> None:
            heard.set()

        subject = nc.new_inbox()
        await nc.subscribe(subject, cb=on_message)
        await nc.publish(subject, b"after the thaw")
        await asyncio.wait_for(heard.wait(), 20)
    finally:
        await lane.close()
        await nc.close()
