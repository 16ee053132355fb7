"""The runner's lock board ends its watch once at a stop, and within ``keywatch.END_SECONDS``
even with NATS frozen: the stop's own end (``_stop_at``) is not followed by a second one from
the watch's ``finally``, which asked the frozen NATS for the consumer's delete a second time
(seen with the check taken out: two deletes asked, thawed within the bound or past it)."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import nats
import pytest
from structlog.testing import capture_logs

from jobrunner.common import keywatch, subscription
from jobrunner.common.slots import SlotValue
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.board import LockBoard
from tests.freeze import stopped
from tests.tools.clogged_nats import frozen_and_clogged

pytestmark = pytest.mark.timeout(120)

NOT_UNSUBSCRIBED = (
    "a bucket watch not unsubscribed in time: the UNSUB is queued, sent when NATS takes it"
)
# An outer guard against a hang only (nats-py's own end waits for its UNSUB for ever).
ENDS_WITHIN = 30.0


async def _nothing(_: SlotValue) -> None:
    pass


@pytest.mark.parametrize(
    ("thawed_after", "unsubscribed"),
    [(keywatch.END_SECONDS - 0.7, True), (keywatch.END_SECONDS + 20.0, False)],
    ids=["thawed-within-the-bound", "thawed-past-the-bound"],
)
async def test_a_stopped_watch_is_ended_once_and_within_its_bound_with_nats_frozen(
    own_nats: EmbeddedNats, thawed_after: float, unsubscribed: bool
) -> None:
    """NATS frozen as the runner stops: thawed just within END_SECONDS, the watch is
    unsubscribed and nothing is said; thawed past it, the watch has ended while NATS is still
    frozen, said once. Either way its consumer's delete is asked for once, not twice."""
    nc = await nats.connect(own_nats.url)
    try:
        kv = await nc.jetstream().create_key_value(bucket=f"locks{uuid.uuid4().hex[:8]}")
        await kv.put("slot.a", msgspec.json.encode(SlotValue(job_id="j1", phase="held")))
        board, stop = LockBoard(), asyncio.Event()
        watching = asyncio.create_task(board.watch(kv, stop, _nothing))
        await board.ready.wait()  # the bucket's state replayed
        deletes_before = subscription.deletes_pending()
        with capture_logs() as logs:
            async with frozen_and_clogged(own_nats, nc, thawed_after=thawed_after):
                stop.set()
                # Not ``wait_for``, whose cancel at the timeout the watch would take for a
                # failure and end on (the path under test is the stop's own end).
                done, _ = await asyncio.wait({watching}, timeout=ENDS_WITHIN)
                assert own_nats.proc is not None
                frozen_at_the_end = stopped(own_nats.proc.pid)
                assert watching in done, "the watch did not end on stop"
                assert watching.exception() is None
                # Asked while NATS is frozen or has just thawed: each delete waits on it.
                deletes_asked = subscription.deletes_pending() - deletes_before
        said = [e for e in logs if e["event"] == NOT_UNSUBSCRIBED]
        assert len(said) == (0 if unsubscribed else 1), said
        if not unsubscribed:
            assert frozen_at_the_end  # ended by its own bound, not by the thaw
            assert deletes_asked == 1
        assert deletes_asked <= 1
    finally:
        await nc.close()
