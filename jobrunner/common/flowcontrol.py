"""A reader's answers to JetStream's flow-control requests: sent only once its callback has
taken every message the server sent before the request, and sent by the reader itself.

The server sends an ordered consumer a window of messages, then a flow-control request, and
sends no more until the request is answered: answering only once the reader took the window is
what keeps a reader that does not keep up from buffering without bound (and nats-py from
dropping what it cannot hold). nats-py's private state, read and written here, is checked by
``tests/unit/test_natspy_private_state.py``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from nats.js import JetStreamContext


def answer_flow_control_once_taken(sub: JetStreamContext.PushSubscription) -> None:
    """Make the server's flow-control requests of ``sub`` (a subscription with a callback that
    calls ``answer_held_flow_control`` for each message it takes) wait until the callback has
    taken the messages sent before them, and make the callback the only one to send a held
    answer.

    nats-py 2.16 counts a callback subscription's messages as delivered when they arrive
    (``Subscription.delivered`` is its count of arrivals), so it answers every flow-control
    request at once: the server never waits, and while the callback waits (a reader's batch
    full: its viewers behind) the messages pile up in nats-py's queue until its byte limit,
    past which nats-py drops them ("slow consumer"). Its ordered consumer has counted a dropped
    message as received, so nothing resends it: a job's SSE viewers silently lost whole line
    batches under a flood. Counted as nats-py counts it for a subscription without a callback
    (the messages queued, less those still in the queue), the server waits instead, and the
    messages wait in JetStream.

    nats-py then holds the answer to a request that came while messages were still queued, and
    its own task sends it when it looks, every 0.25 s: the server idled up to a quarter second
    a window (a job's stream read from its start came at a third of its speed). That task is
    stopped here; the callback sends the answer as it takes the message that completes the
    count. It is the only path that needs one: the count moves only as nats-py hands the
    callback a message, a request that comes with nothing queued is answered by nats-py as it
    arrives, and a message the callback does not keep (a reader that lost messages) belongs to
    a subscription being dropped, whose consumer needs no answer. nats-py's task also had a
    race of its own: it cleared the held answer after its publish, so a request held while that
    publish waited (a full outbound buffer) was wiped, and the server stalled until its next
    idle heartbeat. The stalled heartbeat (``Nats-Consumer-Stalled``), which nats-py answers at
    once, remains the server's own net."""
    jsi: Any = sub._sub._jsi
    jsi.get_js_delivered = functools.partial(_taken_from_queue, jsi)
    if jsi._fctask is not None:
        jsi._fctask.cancel()


def _taken_from_queue(jsi: Any) -> int:
    return int(jsi._fciseq - jsi._sub._pending_queue.qsize())


async def answer_held_flow_control(jsi: Any) -> None:
    """Send the flow-control answer nats-py holds for ``jsi`` if the callback has now taken the
    messages sent before its request; the callback calls it after it took each message. Counted
    as ``answer_flow_control_once_taken`` counts, so never before the reader has them."""
    reply = jsi._fcr
    if reply is None or _taken_from_queue(jsi) < jsi._fcd:
        return
    # Cleared before the publish's first await: a request held while it waits is kept for the
    # next message's call, and this one is sent once.
    jsi._fcr, jsi._fcd = None, 0
    with contextlib.suppress(Exception):  # closed, or reconnecting with a full buffer: as nats-py
        await jsi._conn.publish(reply)
