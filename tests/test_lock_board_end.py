"""The runner's lock board ends its watch once at a stop, and within its bound even with NATS
frozen: the stop's own end (``_stop_at``) is not followed by a second one from the watch's
``finally``, which asked NATS to delete the watch's consumer a second time (seen with the check
taken out: NATS received two deletes, thawed within the bound or past it)."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import nats
import pytest
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from jobrunner.common.slots import SlotValue
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.board import LockBoard
from tests.freeze import stopped
from tests.tools.clogged_nats import BOUND, THAWED_EITHER_SIDE_OF_THE_BOUND, frozen_and_clogged

pytestmark = pytest.mark.timeout(120)

NOT_UNSUBSCRIBED = (
    "a bucket watch not unsubscribed in time: the UNSUB is queued, sent when NATS takes it"
)
# An outer guard against a hang only (nats-py's own end waits for its UNSUB for ever).
ENDS_WITHIN = 30.0
# Outer guards for what NATS does once thawed: its clogged connection drained (megabytes of
# publishes) and the consumer's delete taken.
DRAINED_WITHIN = 60


async def _nothing(_: SlotValue) -> None:
    pass


@THAWED_EITHER_SIDE_OF_THE_BOUND
async def test_a_stopped_watch_is_ended_once_and_within_its_bound_with_nats_frozen(
    own_nats: EmbeddedNats, frozen_for: float, unsubscribed: bool
) -> None:
    """NATS frozen as the runner stops: thawed 1 s into the board's 3 s bound, the watch is
    unsubscribed and nothing is said; thawed 2 s past it, the watch has ended while NATS is
    still frozen, said once. Either way NATS receives one delete of the watch's consumer, not
    two."""
    nc = await nats.connect(own_nats.url)
    observer = await nats.connect(own_nats.url)
    try:
        bucket = f"locks{uuid.uuid4().hex[:8]}"
        kv = await nc.jetstream().create_key_value(bucket=bucket)
        await kv.put("slot.a", msgspec.json.encode(SlotValue(job_id="j1", phase="held")))
        deletes: list[str] = []

        async def received(msg: Msg) -> None:
            deletes.append(msg.subject)

        await observer.subscribe(f"$JS.API.CONSUMER.DELETE.KV_{bucket}.*", cb=received)
        await observer.flush()
        board, stop = LockBoard(end_within=BOUND), asyncio.Event()
        watching = asyncio.create_task(board.watch(kv, stop, _nothing))
        await board.ready.wait()  # the bucket's state replayed
        with capture_logs() as logs:
            async with frozen_and_clogged(own_nats, nc, thawed_after=frozen_for):
                stop.set()
                # Not ``wait_for``, whose cancel at the timeout the watch would take for a
                # failure and end on (the path under test is the stop's own end).
                done, _ = await asyncio.wait({watching}, timeout=ENDS_WITHIN)
                assert own_nats.proc is not None
                frozen_at_the_end = stopped(own_nats.proc.pid)
                assert watching in done, "the watch did not end on stop"
                assert watching.exception() is None
        # Thawed: every request the watch's ends asked is in the connection's buffer, sent with
        # the drain; the observer's flush comes after the deliveries NATS made it before.
        async with asyncio.timeout(DRAINED_WITHIN):
            while await observer.jetstream().consumers_info(f"KV_{bucket}"):  # noqa: ASYNC110 - the server's state
                await asyncio.sleep(0.1)
        await nc.flush(timeout=DRAINED_WITHIN)
        await observer.flush(timeout=DRAINED_WITHIN)
        said = [e for e in logs if e["event"] == NOT_UNSUBSCRIBED]
        assert len(said) == (0 if unsubscribed else 1), said
        if not unsubscribed:
            assert frozen_at_the_end  # ended by its own bound, not by the thaw
        assert len(deletes) == 1, deletes
    finally:
        await observer.close()
        await nc.close()
