"""The runner and the notifier ask for several messages at once only while more are waiting."""

from __future__ import annotations

from typing import Any

from nats.aio.msg import Msg

from jobrunner.common.subscription import waiting_after

CLIENT: Any = None


def _delivery(pending: int) -> Msg:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
    return Msg(CLIENT, subject="x", reply=f"$JS.ACK.S.C.1.10.10.1700000000000000000.{pending}")


def test_a_request_that_left_others_waiting_asks_for_a_batch_next() -> None:
    """A backlog is taken several at a time; the last of it, and a lone request, one at a time."""
    assert waiting_after(_delivery(3))
    assert not waiting_after(_delivery(0))


def test_a_message_without_jetstream_metadata_counts_as_nothing_waiting() -> None:
    """A delivery whose metadata cannot be read never makes the runner wait for a batch."""
    assert not waiting_after(Msg(CLIENT, subject="x", reply="_INBOX.abc"))
