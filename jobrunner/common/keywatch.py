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

Unlike nats-py's, a watch whose messages nats-py dropped says so: its iteration raises
``WatchLostMessages`` (a ``nats.errors.Error``: the API answers EVENT_STORE_UNAVAILABLE), and its
user watches again from a new current state (``current_entries`` for a listing; the lock board and
the token watch start a new watch). nats-py answers a watch's flow control only once the watch has
taken what came before (``flowcontrol.answer_flow_control_once_taken``; the watch's callback sends
a held answer as it takes each message), so only a watch whose reader is behind by more than the
server's flow-control window can meet a drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

from jobrunner.common import eventstore, flowcontrol, subscription
from jobrunner.common.subscription import position

# How long the server keeps a watch's consumer once nobody listens: nats-py's watch default.
INACTIVE_THRESHOLD = 5 * 60.0  # seconds
# How long a watch's end waits for its UNSUB: queued at once, it goes out when NATS takes what
# is queued; a frozen NATS must not hold the read (or the stop) that ended the watch.
END_SECONDS = 2.0

# How often a watch whose current state is not delivered yet asks again which of the keys it
# expects are still stored (``settle_when_stored_came``), whatever arrives or not: one removed
# without a marker (a stream-level purge, a purge or delete marker that expired: the lock
# bucket's) after the look-up, or while a watch made again was away, never comes, and on a quiet
# bucket nothing else would end the wait (the lock board never ready, a listing failing at its
# caller's timeout). A key still stored is waited for all the same: a look never ends it early.
UNSEEN_CHECK_SECONDS = 0.5
# How long one such look may take: a slow or failed one is asked again at the next tick.
UNSEEN_CHECK_BOUND = 2.0
# How many subjects the server names in one stream info answer (nats-server's
# JSMaxSubjectDetails): a bucket with more keys under a filter is read a page at a time.
SUBJECTS_PAGE = 100_000
# How many subjects each page repeats of the one before: the next page must still hold the last
# subject read, else keys before it went meanwhile and the pages moved (read again from the start).
PAGE_OVERLAP = 1_000
# How many watches a listing makes at most, each after the last lost messages in nats-py.
LISTING_TRIES = 3

# The operation of a marker the server itself left (nats-server >= 2.11), as nats-py reads it: an
# expired value or a purge is a purge, a removal a delete.
_MARKER_OPERATIONS = {"MaxAge": KV_PURGE, "Purge": KV_PURGE, "Remove": KV_DEL}


class WatchLostMessages(nats.errors.Error):
    """nats-py dropped messages of a watch (its queue past its limit: "slow consumer"). Its
    ordered consumer counted them as received and never asks for them again: the watch has a
    gap, so it ends, and its user watches again from a new current state. Also raised for a
    watch whose consumer was made again before its current state was delivered: the new one
    sends every revision after the last message received, an old one first, and a key would
    count as come at a revision that is not its last."""

    def __str__(self) -> str:
        return "nats: a bucket watch lost messages in the client; watch again"


class Watch(KeyValue.KeyWatcher):
    """nats-py's ``KeyWatcher``, whose iteration raises ``WatchLostMessages`` once nats-py has
    dropped one of its messages (``messages_lost``): what is still queued before it is dropped
    too, since the user starts again from a new current state."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)  # type: ignore[no-untyped-call]
        self.lost = False
        # The timer that delivers the current state once no key still stored is missing
        # (``settle_when_stored_came``), until then.
        self.settling: asyncio.Task[None] | None = None

    def messages_lost(self) -> None:
        """Called by ``subscription.lost_messages`` for nats-py's report of a drop: the
        subscription and its consumer go at once (nats-py would keep answering their flow
        control, each window sent only to be dropped), and whoever iterates is woken."""
        self.give_up("bucket watch lost messages in nats-py: watched again")

    def give_up(self, why: str) -> None:
        """End the watch, its iteration raising ``WatchLostMessages`` (``why`` logged once)."""
        if self.lost:
            return
        self.lost = True
        structlog.get_logger().warning(why)
        if self.settling is not None:
            self.settling.cancel()
        if self._sub is not None:
            subscription.track(asyncio.ensure_future(_end_subscription(self._sub, END_SECONDS)))
        _end_iteration(self)

    def _raise_if_lost(self) -> None:
        if self.lost:
            raise WatchLostMessages

    async def updates(self, timeout: float = 5.0) -> Any:
        self._raise_if_lost()
        entry = await super().updates(timeout)  # type: ignore[no-untyped-call]
        self._raise_if_lost()
        return entry

    async def __anext__(self) -> Any:
        self._raise_if_lost()
        try:
            return await super().__anext__()  # type: ignore[no-untyped-call]
        except StopAsyncIteration:
            self._raise_if_lost()
            raise


async def watch_keys(kv: KeyValue, keys: Sequence[str]) -> Watch:
    """A watch of the keys matching any of ``keys`` (KV key filters: ``slot.>``), as
    ``kv.watch`` watches one filter (its defaults: no history, values and deletes); its entries
    are nats-py's but for ``created`` (None)."""
    assert not isinstance(keys, str), "a sequence of filters, not one"
    # nats-py's bucket exposes its name, stream, subject prefix and context only as private
    # attributes (checked by tests/unit/test_natspy_private_state.py).
    pre = kv._pre
    watcher = Watch(kv)
    set_up: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    filters = [pre + key for key in keys]
    # The keys stored now, before the consumer exists: each has a last message (a value or a
    # delete's marker) at or after the consumer's start, so the current state is delivered
    # once each has come (``settled``). Not the count pending the server sends with each
    # message: it reached 0 while a key's value was still to come, and a listing ended without
    # a record that had been there all along (tests/test_keywatch_listing.py). Two ways, in
    # nats-server 2.11: with one value a key (history 1) a last-per-subject consumer is a plain
    # one from the first sequence; a rewritten key's undelivered old revision, removed, lowers
    # the count at once (storeUpdates -> decStreamPending) while its new one is counted later
    # (processStreamSignal, through the consumer's signal queue): a message in between says 0.
    # With history > 1, the list of each key's last message is built when the consumer is made,
    # the count later (setLeader -> streamNumPending): a key rewritten in between is sent twice
    # but counted once, and an old revision past the history removed at a sequence at or after
    # the consumer's position lowers the count for a message the list never sends.
    unseen = await stored_subjects(kv, filters)

    def reset_before_settling() -> bool:
        """Whether the consumer was made again (a gap, a reconnect: nats-py's reset, from the
        message after the last one received) before the current state was delivered. The new
        consumer sends every revision after that one, not each key's last: a key rewritten
        would count as come at its old revision, and the ``None`` come before its last. The
        watch ends, its user watches again (as after a drop)."""
        if watcher._sub is None or watcher._sub._sub._subject == deliver:
            return False
        watcher.give_up("bucket watch made again before its current state came: watched again")
        return True

    def settled(subject: str) -> bool:
        """The first time every key stored at the start has come: the current state is
        delivered."""
        unseen.discard(subject)
        if watcher._init_done or unseen or reset_before_settling():
            return False
        watcher._init_done = True
        return True

    async def settle_when_stored_came() -> None:
        """Every ``UNSEEN_CHECK_SECONDS`` until the current state is delivered: forget the
        keys expected that are no longer stored (gone without a marker), and deliver it once
        none is left. A look that fails or takes longer than ``UNSEEN_CHECK_BOUND`` is asked
        again at the next tick."""
        while not watcher._init_done:
            await asyncio.sleep(UNSEEN_CHECK_SECONDS)
            if reset_before_settling():
                return
            try:
                async with asyncio.timeout(UNSEEN_CHECK_BOUND):
                    stored = await stored_subjects(kv, filters)
            except Exception as exc:  # a timeout, NATS away: asked again at the next tick
                structlog.get_logger().debug("bucket watch look-up failed", error=repr(exc))
                continue
            unseen.intersection_update(stored)
            if not unseen and not watcher._init_done:
                watcher._init_done = True
                await watcher._updates.put(None)

    jsi: Any = None  # set once the subscription exists, before any message is taken

    async def on_message(msg: Msg) -> None:
        # As nats-py's watch: no entry before the watch is set up below. Without nats-py's
        # timeout here: ``set_up`` is always settled, set once the subscription is kept or
        # cancelled when the watch is not made (its subscription dropped with it).
        if not set_up.done():
            await set_up
        try:
            await take(msg)
        finally:
            # The only sender of a held flow-control answer (nats-py's own is stopped by
            # ``answer_flow_control_once_taken``): after the message is taken, on every path.
            if jsi is not None and jsi._fcr is not None:
                await flowcontrol.answer_held_flow_control(jsi)

    async def take(msg: Msg) -> None:
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
                    if settled(msg.subject):
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
        if settled(msg.subject):
            await watcher._updates.put(None)

    nc = kv._js._nc
    # Named and delivered here, not by nats-py or the server: a cancel while the consumer is
    # created (its request sent, its reply not come) or while the client subscribes leaves a
    # consumer and a subscription whose names only we then know (``_unmade``).
    name = nc._nuid.next().decode()
    deliver = nc.new_inbox()
    config = api.ConsumerConfig(
        name=name,
        deliver_subject=deliver,
        filter_subjects=filters,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=INACTIVE_THRESHOLD,
    )
    # The creation runs on its own and is never cut short: a delete sent while its create is
    # unanswered may reach JetStream's API first (it serves them concurrently), answer "not
    # found", and the consumer made next would stay. A caller cancelled meanwhile returns at
    # once; the watch made after it is ended then (``_end_once_made``).
    making = asyncio.ensure_future(
        kv._js.subscribe(
            pre + ">",  # not the filter: the config's filter_subjects are
            stream=kv._stream,
            cb=on_message,
            ordered_consumer=True,
            config=config,
        )
    )
    try:
        psub = await asyncio.shield(making)
    except BaseException:
        set_up.cancel()
        if not making.done():
            subscription.track(asyncio.ensure_future(_end_once_made(making, kv, name, deliver)))
        elif making.cancelled() or making.exception() is not None:  # raised here: retrieved
            await _unmade(kv, name, deliver)
        else:
            # Made as the caller's cancel came: ended as a made watch is, its heartbeat check
            # with it (left running, it took the unsubscribed watch's silence for a gap and
            # made its consumer and subscription again, for good).
            await _end_subscription(making.result(), END_SECONDS)
        raise
    # nats-py makes the ordered consumer again from this same config after a gap (its
    # ``reset_ordered_consumer``): under a new name each time, the server's.
    config.name = None
    watcher._sub = psub
    jsi = psub._sub._jsi  # nats-py's flow-control state (test_natspy_private_state)
    # As soon as it exists: nats-py may drop messages from the first flow-control window on.
    flowcontrol.answer_flow_control_once_taken(psub)
    subscription.on_messages_lost(psub, watcher.messages_lost)
    try:
        await asyncio.sleep(0)  # (in the try: a cancel here must not leave the subscription)
        set_up.set_result(True)
        # Nothing stored under the filters: no message will say so. (Not the consumer's info
        # either: its count pending is 0 once the server has sent the messages, which may still
        # be on their way here.)
        if not unseen and not watcher._init_done:
            watcher._init_done = True
            await watcher._updates.put(None)
        elif not watcher._init_done:
            watcher.settling = asyncio.ensure_future(settle_when_stored_came())
            subscription.track(watcher.settling)
    except BaseException:
        set_up.cancel()
        await end_watch(watcher)
        raise
    return watcher


async def stored_subjects(kv: KeyValue, filters: Sequence[str]) -> set[str]:
    """The subjects of the bucket's stream that hold a message now (a value, or a delete's or
    a purge's marker) and match any of ``filters``: the filters asked at once."""
    found = await asyncio.gather(*(_stored_under(kv, subject_filter) for subject_filter in filters))
    return set().union(*found)


async def _stored_under(kv: KeyValue, subject_filter: str) -> set[str]:
    """``stored_subjects`` for one filter, a page (``SUBJECTS_PAGE``) a request: nats-py's
    ``stream_info`` asks for the first page only (it sends no offset), and a bucket of 100,050
    keys under a filter had 50 delivered after its watch's ``None``. The server sorts the
    subjects before paging; each page starts ``PAGE_OVERLAP`` subjects before the last one read
    and must still hold it, or keys before it went meanwhile and the pages are read again."""
    js = kv._js
    subjects: set[str] = set()
    offset = 0
    last: str | None = None  # the greatest subject of the page before
    while True:
        start = max(offset - PAGE_OVERLAP, 0) if last is not None else 0
        request = {"subjects_filter": subject_filter, "offset": start}
        reply = await js._jsm._api_request(
            f"{js._prefix}.STREAM.INFO.{kv._stream}",
            json.dumps(request).encode(),
            timeout=js._timeout,
        )
        page = sorted(reply["state"].get("subjects") or ())
        if last is not None and last not in page:
            subjects.clear()
            offset, last = 0, None
            continue
        subjects.update(page)
        offset = start + len(page)
        if not page or offset >= reply.get("total", 0):
            return subjects
        last = page[-1]


@asynccontextmanager
async def watching(
    kv: KeyValue, keys: Sequence[str], within: float = END_SECONDS
) -> AsyncIterator[Watch]:
    """``watch_keys`` for a read that ends: whichever way it ends (read through, failed, or
    cancelled midway: a request's timeout, a stop), the watch's subscription and its consumer
    go (``end_watch``)."""
    watcher = await watch_keys(kv, keys)
    try:
        yield watcher
    finally:
        await end_watch(watcher, within)


async def current_entries(
    kv: KeyValue, keys: Sequence[str], entry_seconds: float
) -> list[KeyValue.Entry]:
    """The current entry of every key matching ``keys`` (values, and the markers of deleted
    ones), each waited for ``entry_seconds`` at most (else nats-py's TimeoutError). A watch that
    lost messages in nats-py is made again, ``LISTING_TRIES`` times at most, each from the
    bucket's new current state: a listing never has a gap."""
    for tries_left in reversed(range(LISTING_TRIES)):
        entries: list[KeyValue.Entry] = []
        try:
            async with watching(kv, keys) as watcher:
                while (entry := await watcher.updates(timeout=entry_seconds)) is not None:
                    entries.append(entry)
        except WatchLostMessages:
            if not tries_left:
                raise
        else:
            return entries
    raise AssertionError("unreachable: the last try returns or raises")


async def end_watch(watcher: KeyValue.KeyWatcher, within: float = END_SECONDS) -> None:
    """End a watch, waiting ``within`` seconds at most: its subscription unsubscribed, its
    consumer deleted (in the background, ``subscription.delete_consumer_soon``) rather than
    left to the server for ``INACTIVE_THRESHOLD``, and its iteration ended. nats-py's
    ``KeyWatcher.stop`` waits for its UNSUB unbounded (a frozen NATS held a stop), and leaves
    the consumer. Also when the caller is being cancelled: the cancel reaches the caller, the
    unsubscribe and the delete go on."""
    if isinstance(watcher, Watch) and watcher.settling is not None:
        watcher.settling.cancel()  # it could put a ``None`` after the end's STOP_ITER
    if watcher._sub is not None:
        await _end_subscription(watcher._sub, within)
    _end_iteration(watcher)


async def _end_subscription(psub: JetStreamContext.PushSubscription, within: float) -> None:
    jsi = psub._sub._jsi
    if jsi is not None:
        # The activity check would make a consumer again (a reset) for a watch whose consumer
        # is deleted and whose UNSUB waits on a frozen NATS; its flow-control task goes too.
        for task in (jsi._hbtask, jsi._fctask):
            if task is not None:
                task.cancel()
    if psub._consumer:
        subscription.delete_consumer_soon(psub._js, psub._stream, psub._consumer)
    if not psub._closed and not psub._conn.is_closed:
        await eventstore.unsubscribe_within([psub], within, "a bucket watch", closing=False)


async def _end_once_made(
    making: asyncio.Future[JetStreamContext.PushSubscription],
    kv: KeyValue,
    name: str,
    deliver: str,
) -> None:
    """End the watch whose creation its caller gave up on, once the creation has ended (at
    most nats-py's request timeout: its create is a request)."""
    try:
        psub = await making
    except Exception:
        await _unmade(kv, name, deliver)
    else:
        await _end_subscription(psub, END_SECONDS)


async def _unmade(kv: KeyValue, name: str, deliver: str) -> None:
    """Undo what a watch's creation cut short may have left: consumer ``name`` (created
    unless its request never went out), and the client's subscription to ``deliver`` (nats-py
    keeps it from before its SUB is written)."""
    subscription.delete_consumer_soon(kv._js, kv._stream, name)
    nc = kv._js._nc
    left = [sub for sub in list(nc._subs.values()) if sub.subject == deliver]
    if left and not nc.is_closed:
        await eventstore.unsubscribe_within(left, END_SECONDS, "a bucket watch", closing=False)


def _end_iteration(watcher: KeyValue.KeyWatcher) -> None:
    """Whoever iterates the watch stops (the queue is bounded: room is made if it is full)."""
    with contextlib.suppress(asyncio.QueueEmpty):
        if watcher._updates.full():
            watcher._updates.get_nowait()
    watcher._updates.put_nowait(KeyValue.KeyWatcher.STOP_ITER)
