"""The parts of nats-py's private state jobrunner reads (see the note at the nats-py pin in
pyproject.toml): a nats-py release that renames them fails here, not in a reader after a NATS
restart. Plain objects, no server."""

from __future__ import annotations

import inspect

import nats
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext


def test_a_jetstream_context_holds_its_client_as_nc() -> None:
    """``subscription`` and the projector's feed ask the client whether it is connected or
    closed, and which client a reader reads on (``reopen_after_reconnect``)."""
    nc = nats.NATS()
    assert nc.jetstream()._nc is nc


def test_a_push_subscription_holds_its_consumer_name_as_consumer() -> None:
    """The name of a reader's consumer, to delete it or ask whether it is still there."""
    nc = nats.NATS()
    sub = Subscription(nc, 1, "deliver")
    push = JetStreamContext.PushSubscription(nc.jetstream(), sub, "STREAM", "consumer-name")
    assert push._consumer == "consumer-name"


def test_unsubscribe_stops_the_delivery_before_it_waits() -> None:
    """A reader opened again reads its restart point once its old subscription's ``unsubscribe``
    returned: nats-py must have stopped that subscription's delivery task and dropped it from
    the client before its first await, so no message of it reaches the reader after that."""
    source = inspect.getsource(Subscription.unsubscribe)
    stop = source.index("self._stop_processing()")
    remove = source.index("self._conn._remove_sub(self._id)")
    first_await = source.index("await ")
    assert stop < first_await
    assert remove < first_await
