"""Publishes through an ack inbox whose ack a NATS restart lost (``AckInbox.reconnected``): they
fail as soon as nats-py is connected again, and a retrying caller's copy sent then is stored
once; a publish made on the new connection still gets its ack.

A real nats-server of the test's own, SIGKILLed and started again on the same port and store,
behind ``tests/ackholding_proxy.py`` (it holds the publish's ack, then drops it with the
connection): ``tests/tools/restartable_nats.py``. The connection is ``eventstore.connect``'s,
with its reconnected callback. The inboxes' ack timeout is 30 s and each publish must be over
within 10 s of the restart: only the reconnect can have ended it (the margin absorbs a slow
machine, never the timeout)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats.errors
import pytest

from jobrunner.common import ackinbox, retry
from jobrunner.contracts import codec
from jobrunner.contracts.codec import MSG_ID_HEADER
from tests.tools.restartable_nats import ACK_TIMEOUT, SOON, progress, restartable

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("down", [0.0, 1.0], ids=["restarted-at-once", "down-1s"])
async def test_an_event_whose_ack_a_restart_lost_is_stored_once_and_soon(
    tmp_path: Path, down: float
) -> None:
    """``publish_until_stored`` (a progress event; status events and the line publisher's
    fallback take the same path) whose ack the kill lost: sent again as soon as nats-py is
    back, not after its 30 s ack timeout; JetStream keeps the first copy (the copy's ack says
    duplicate). An event published while NATS is down (held by nats-py) is stored once, by its
    first copy (its ack comes on the new connection: not failed, not sent again). One
    published after the reconnect, its ack held past a reconnect callback of its own, is not
    failed: its ack comes."""
    async with restartable(tmp_path) as running:
        inbox = ackinbox.AckInbox(running.nc, ACK_TIMEOUT)
        names = running.names
        lost = progress("lostack", 1)
        running.proxy.arm(names.subject(lost))
        sending = asyncio.create_task(inbox.publish_until_stored(names, lost))
        killed = running.server.proc
        assert killed is not None
        striking = asyncio.create_task(running.strike(names.subject(lost), down))
        while killed.poll() is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # until the kill: the next publish waits for NATS
        held = progress("heldwhiledown", 1)
        sending_held = asyncio.create_task(inbox.publish_until_stored(names, held))
        await striking
        restarted = time.monotonic()
        done, _ = await asyncio.wait((sending, sending_held), timeout=SOON)
        took = time.monotonic() - restarted
        assert sending in done, f"not stored {SOON} s after the restart (ack timeout 30 s)"
        assert sending_held in done, "the event published while NATS was down was not stored"
        assert sending.result().duplicate, "the copy sent again should be the duplicate"
        # Held by nats-py and sent on the new connection: its own ack came, it was not failed.
        assert not sending_held.result().duplicate, "held for the new connection, sent again"
        assert await running.stored(names.subject(lost)) == (1, codec.encode(lost))
        assert await running.stored(names.subject(held)) == (1, codec.encode(held))
        assert took < SOON

        # Published on the new connection, its ack held while the inbox hears of a reconnect
        # (as when a publish goes out between nats-py's reconnect and its callback): not failed.
        later = progress("afterreconnect", 2)
        running.proxy.arm(names.subject(later))
        sending_later = asyncio.create_task(inbox.publish_until_stored(names, later))
        async with asyncio.timeout(SOON):
            await running.proxy.hit.wait()
        assert await running.proxy.stored()
        ackinbox.reconnected(running.nc)
        running.proxy.release()
        async with asyncio.timeout(SOON):
            ack = await sending_later
        assert not ack.duplicate, "failed by the reconnect although its ack was on its way"
        assert await running.stored(names.subject(later)) == (1, codec.encode(later))


async def test_a_write_with_a_timeout_of_its_own_whose_ack_a_restart_lost_fails_soon(
    tmp_path: Path,
) -> None:
    """A headed publish with a timeout of its own (a lock bucket write's path) whose ack the
    kill lost fails with ``AckLostWithConnection`` soon after the restart, not after its 30 s:
    a ``TimeoutError`` the retry policy retries."""
    async with restartable(tmp_path) as running:
        inbox = ackinbox.AckInbox(running.nc, 2 * ACK_TIMEOUT)
        subject = running.names.subject(progress("timedwrite", 1))
        running.proxy.arm(subject)
        sending = asyncio.create_task(
            inbox.publish_headed(subject, b"{}", {MSG_ID_HEADER: "timed-1"}, ACK_TIMEOUT)
        )
        await running.strike(subject)
        restarted = time.monotonic()
        with pytest.raises(ackinbox.AckLostWithConnection) as failed:
            async with asyncio.timeout(SOON):
                await sending
        assert time.monotonic() - restarted < SOON
        assert isinstance(failed.value, nats.errors.TimeoutError)
        assert retry.is_transient(failed.value)
        # Sent again with its id: the one copy stored is kept.
        again = await inbox.publish_headed(subject, b"{}", {MSG_ID_HEADER: "timed-1"}, ACK_TIMEOUT)
        assert again.duplicate
        assert await running.stored(subject) == (1, b"{}")
