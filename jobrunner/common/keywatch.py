"""A watch of some of a KV bucket's keys: nats-py's ``KeyValue.watch`` takes one key filter.

The runners' lock board needs three kinds of keys of the lock bucket (leases and queue places)
and none of the others: each running job's record alone is two writes and their markers, handed
to every runner's watch to be dropped there (bench/RESULTS.md, "s26ops" and "s27board"). One
consumer with the server's ``filter_subjects`` (several filters: nats-server >= 2.10; jobrunner
needs 2.11) leaves them at the server. Everything else is nats-py's watch as it is: the same
ordered push consumer (each key's last value, then every change, in stream order), the same
entries, and the same ``None`` once the bucket's current state is delivered. So the watch is
iterated, stopped and made again after a reconnect (``subscription.reopen_after_reconnect``)
as nats-py's is; its filters are in the consumer's config, which nats-py keeps and sends again
whenever it makes the consumer again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

from jobrunner.common.subscription import position

# How long the server keeps a watch's consumer once nobody listens: nats-py's watch default.
INACTIVE_THRESHOLD = 5 * 60.0  # seconds

# The operation of a marker the server itself left (nats-server >= 2.11), as nats-py reads it: an
# expired value or a purge is a purge, a removal a delete.
_MARKER_OPERATIONS = {"MaxAge": KV_PURGE, "Purge": KV_PURGE, "Remove": KV_DEL}


async def watch_keys(kv: KeyValue, keys: Sequence[str]) -> KeyValue.KeyWatcher:
    """A watch of the keys matching any of ``keys`` (KV key filters: ``slot.>``), as
    ``kv.watch`` watches one filter (its defaults: no history, values and deletes); its entries
    are nats-py's but for ``created`` (None)."""
    assert not isinstance(keys, str), "a sequence of filters, not one"
    # nats-py's bucket exposes its name, stream, subject prefix and context only as private
    # attributes (checked by tests/unit/test_natspy_private_state.py).
    pre = kv._pre
    watcher = KeyValue.KeyWatcher(kv)  # type: ignore[no-untyped-call]
    set_up: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def settled(pending: int) -> bool:
        """The first time the consumer has nothing pending: the current state is delivered."""
        if pending == 0 and not watcher._init_done:
            watcher._init_done = True
            return True
        return False

    async def on_message(msg: Msg) -> None:
        # As nats-py's watch: no entry before the consumer's pending count is known below.
        # Without nats-py's timeout here: ``set_up`` is always settled, set once the count is
        # known or cancelled when the watch is not made (its subscription dropped with it).
        if not set_up.done():
            await set_up
        # The stream sequence and the count pending from the reply subject: ``msg.metadata``
        # builds five objects and a datetime a message for the same.
        revision, pending = position(msg)
        operation = None
        headers = msg.headers
        if headers:
            operation = headers.get(KV_OP)
            if operation is None and KV_MARKER_REASON in headers:
                operation = _MARKER_OPERATIONS.get(headers[KV_MARKER_REASON])
                if operation is None:
                    # A reason of a later server: skipped, as nats-py does, rather than taken
                    # for a value.
                    if settled(pending):
                        await watcher._updates.put(None)
                    return
        entry = KeyValue.Entry(
            bucket=kv._name,
            key=msg.subject[len(pre) :],
            value=msg.data,
            revision=revision,
            delta=pending,
            created=None,  # the time stored: read by nobody here (it needs ``msg.metadata``)
            operation=operation,
        )
        await watcher._updates.put(entry)
        if settled(pending):
            await watcher._updates.put(None)

    config = api.ConsumerConfig(
        filter_subjects=[pre + key for key in keys],
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=INACTIVE_THRESHOLD,
    )
    watcher._sub = await kv._js.subscribe(
        pre + ">",  # not the filter: the config's filter_subjects are
        stream=kv._stream,
        cb=on_message,
        ordered_consumer=True,
        config=config,
    )
    try:
        await asyncio.sleep(0)  # (in the try: a cancel here must not leave the subscription)
        # Nothing stored under the filters: no message will say so, the consumer's info does.
        info = await watcher._sub.consumer_info()
        set_up.set_result(True)
        if info.num_pending == 0 and watcher._sub.delivered == 0 and settled(0):
            await watcher._updates.put(None)
    except BaseException:
        set_up.cancel()
        await watcher._sub.unsubscribe()
        raise
    return watcher
