"""Reading the event stream from a sequence: one ordered consumer, handed out in batches.

Every reader of the stream in the API and the audit commands is the same loop: an ordered
consumer from a stream sequence (or a time), messages as they come, and something to do when
nothing came for a while (a keep-alive, or the end of a history read). It is written here once.

Why batches: nats-py's ``next_msg`` starts a task and a timer per message, which caps a reader at
a few ten thousand messages a second. Here the subscription's callback only appends each message
to a list and the reader takes the whole list at once: one wake-up per batch, not per message.

Why a byte bound: the callback stops taking messages while the list holds ``max_buffered_bytes``.
The messages then wait in nats-py's queue, which holds back the consumer's flow-control reply, so
the server stops sending: a reader that does not keep up never buffers without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, SlowConsumerError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError
from nats.nuid import NUID

from jobrunner.common.flowcontrol import answer_flow_control_once_taken, answer_held_flow_control
from jobrunner.common.stopping import unless_stopped, wait_within

if TYPE_CHECKING:
    from jobrunner.common.ackinbox import AckInbox

DEFAULT_MAX_BUFFERED_BYTES = 8 * 1024 * 1024

_names = NUID()  # the readers' consumer names

# How long one pull request of ``fetch_one`` waits at the server for a message. A stopping
# service waits out the request under way (see ``fetch_one`` for why it is never abandoned), so
# this bounds how long a stop waits for it; the price of a short one is a few small requests a
# second from an idle runner or notifier. (It was 1 s: every stop of a runner took a second.)
FETCH_SECONDS = 0.2


class OrderedReader:
    """The messages of one ordered consumer, taken a batch at a time."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subjects: list[str],
        start: api.ConsumerConfig,
        max_buffered_bytes: int,
    ) -> None:
        self._js = js
        self._stream = stream
        self._subjects = subjects
        self._start = start  # where it started (``start_config``), to open again from there
        self._max_bytes = max_buffered_bytes
        self._batch: list[Msg] = []
        self._bytes = 0
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.sub: JetStreamContext.PushSubscription | None = None
        self._jsi: Any = None  # nats-py's ordered-consumer state of ``sub``: its flow control
        self._created = False  # the server made its consumer (a refused create made nothing)
        self._creating = False  # ``_open`` waits for its consumer's create (see ``lost_messages``)
        self._closed = False  # unsubscribed, its consumer's deletion on its way
        self._last: Msg | None = None  # the last message put in the batch
        self._reopening: asyncio.Future[None] | None = None  # ``reopen_if_gone_soon``'s task
        self._reconnected = asyncio.Event()  # cuts its wait before trying again short
        # The consumer the last message came from, and the consumer sequence its next one
        # should have: a hole shows a message nats-py dropped without telling (a new consumer
        # starts at 1).
        self._consumer: str | None = None
        self._next_delivery = 1
        # nats-py dropped a message: the rest of this subscription's are dropped here too
        # (``_dropped``), and the reader opens again after the last one it kept, tried until
        # it has (``_must_reopen``).
        self._dropped = False
        self._must_reopen = False
        # Called after each message's arrival, in nats-py's delivery task: it may ``take`` the
        # batch there and then (True), a turn of the event loop before the reader's own task
        # would have it; else (False) the reader's task is woken as usual.
        self.on_arrival: Callable[[], bool] | None = None

    async def _on_message(self, msg: Msg) -> None:
        # Runs in nats-py's delivery task: waiting here is what holds the server back.
        await self._drained.wait()
        if self._dropped or self._lost_one_before(msg):
            return
        self._batch.append(msg)
        self._last = msg
        self._bytes += len(msg.data)
        if self._bytes >= self._max_bytes:
            self._drained.clear()
        # The only sender of a held answer (see ``answer_flow_control_once_taken``): before
        # ``on_arrival``, so that nothing it raises can leave the server waiting.
        if self._jsi._fcr is not None:  # an answer held: this message may be what it waits for
            await answer_held_flow_control(self._jsi)
        if self.on_arrival is None or not self.on_arrival():
            self._arrived.set()

    def _lost_one_before(self, msg: Msg) -> bool:
        """Is there a hole in the consumer's sequence before ``msg``? nats-py reports each
        message it drops (``lost_messages``); this is the net behind that: a consumer's
        deliveries are 1, 2, 3, ..., a new one's (nats-py made it again after a gap, or
        ``_reopen``) from 1."""
        consumer, delivery = delivered_as(msg)
        expected = self._next_delivery if consumer == self._consumer else 1
        if delivery == expected:
            self._consumer, self._next_delivery = consumer, delivery + 1
            return False
        self.lost_messages(f"expected delivery {expected} of {consumer}, got {delivery}")
        return True

    def lost_messages(self, why: str) -> None:
        """nats-py dropped messages of this reader (its queue over its byte limit: "slow
        consumer"). Its ordered consumer counts a dropped one as received and never asks for it
        again, so the reader drops the rest of this subscription's too and opens again after the
        last message it kept: nothing is skipped. At once when the reader is taking; else (its
        batch full: its viewers behind) at its next ``take``, since a consumer opened again
        now would only fill nats-py's queue again meanwhile. The old subscription goes at once
        all the same: nats-py would go on answering its heartbeats' flow-control requests, each
        a window (up to 32 MiB) sent only to be dropped, and make it a consumer nobody deletes
        (a drop leaves its sequence behind, so the next heartbeat looks like a gap)."""
        if self._dropped or self._closed:
            return
        structlog.get_logger().warning(
            "ordered reader lost messages in nats-py: reading them again", why=why
        )
        self._dropped = self._must_reopen = True
        if self._creating:
            self._unsubscribe_while_creating()
        else:
            self._read_again()

    def _unsubscribe_while_creating(self) -> None:
        """A drop while ``_open`` waits for its consumer's create: the subscription goes at once
        (nats-py would go on answering flow-control requests for windows dropped here, and, a
        create outlasting an idle heartbeat, make another consumer on it); its consumer's
        deletion and the reopen wait for the create's answer (``_open``). Left open: a reconnect
        during the create, whose reply may then never come: the consumer the server made goes
        on sending its window to nobody until the create's timeout (nats-py's 5 s), when
        ``_open`` deletes it."""
        assert self.sub is not None
        track(asyncio.ensure_future(self._drop_old_subscription(self.sub, created=False)))

    def _read_again(self) -> None:
        """``lost_messages``' reopen, or the old subscription's drop until the next ``take``.
        Never while a create is under way: a reopen beside it would take its subscription and
        consumer for the new one's, and the consumer it makes would never be deleted."""
        if self._drained.is_set():
            self.reopen_if_gone_soon(_request_turns())
        elif self.sub is not None:
            created, self._created = self._created, False  # ``_reopen`` deletes nothing more
            track(asyncio.ensure_future(self._drop_old_subscription(self.sub, created)))

    async def _drop_old_subscription(
        self, sub: JetStreamContext.PushSubscription, created: bool
    ) -> None:
        """Unsubscribe ``sub`` and delete its consumer (nats-py's current one, once it can make
        no other), as ``close`` does."""
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if created:
            _delete_soon(self._js, self._stream, sub)

    async def _open(self, config: api.ConsumerConfig) -> None:
        """Subscribe to ``config``'s deliver subject, then create its consumer (``config`` from
        ``ordered_config``). A reader closed meanwhile (``reopen_if_gone_soon`` runs beside its
        owner) keeps nothing: its subscription is dropped, its consumer deleted."""
        # Subscribed before the consumer exists, as ``js.subscribe`` does only after its
        # create's reply: the SUB and the create go out in one write, and the server, which
        # registers the SUB before its API handles the create, delivers the first events behind
        # the create's reply instead of one round trip (and a SUB's hop) later.
        sub = await self._js.subscribe_bind(
            self._stream,
            config,
            consumer=config.name or "",
            cb=self._on_message,
            ordered_consumer=True,
            # Enough room for the server's flow-control window; the callback bounds the rest.
            pending_bytes_limit=max(4 * self._max_bytes, 64 * 1024 * 1024),
        )
        answer_flow_control_once_taken(sub)
        _readers[sub._sub] = weakref.ref(self)  # before its first message: see ``lost_messages``
        if self._closed:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            return
        self.sub, self._jsi, self._created = sub, sub._sub._jsi, False
        self._creating = True
        try:
            await self._js.add_consumer(self._stream, config)
        except APIError:
            raise  # refused: the server made nothing
        except BaseException:
            # Timed out or cancelled: it may have been made after all.
            _delete_soon(self._js, self._stream, sub)
            raise
        finally:
            self._creating = False
        if self._closed:  # ``close`` found no consumer to delete
            _delete_soon(self._js, self._stream, sub)
            return
        self._created = True
        # nats-py keeps ``config`` to make the consumer again after a gap (a new deliver
        # subject, from the next sequence): without a name, as ``js.subscribe`` makes it, since
        # the first one may still be on the server then.
        config.name = None
        if self._must_reopen:  # nats-py dropped messages while the create was under way
            self._read_again()

    def reopen_if_gone_soon(self, turns: asyncio.Semaphore) -> bool:
        """In the background (one task at a time, holding one of ``turns`` for its requests):
        ask the server whether this reader's consumer is still there, and if it is not, open
        the reader again from the message after the last one it got. False when it was not
        started (the reader is closed, or a check is under way already: it tries again now, not
        after the rest of its wait)."""
        if self._reopening is not None:
            self._reconnected.set()
            return False
        if self._closed or self.sub is None:
            return False
        self._reopening = asyncio.ensure_future(self._reopen_if_gone(turns))
        track(self._reopening)
        return True

    async def _reopen_if_gone(self, turns: asyncio.Semaphore) -> None:
        failures = 0
        try:
            while not self._closed and not self._js._nc.is_closed:
                self._reconnected.clear()  # a reconnect from now on: no wait after a failure
                try:
                    async with turns:
                        if not self._closed and (
                            self._must_reopen or not await self._consumer_exists()
                        ):
                            await self._reopen()
                    if not self._must_reopen or self._closed:
                        return
                except Exception as exc:
                    # NATS away again, its JetStream not ready yet, the stream's consumer
                    # limit reached: tried again, else the reader would get nothing until
                    # nats-py's own check (10 to 20 s).
                    failures += 1
                    if failures == 1:  # once a reader, not once a retry of each of 1,500
                        structlog.get_logger().warning(
                            "ordered reader not opened again yet", error=repr(exc)
                        )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(
                            min(REOPEN_RETRY_SECONDS * 2 ** (failures - 1), 5.0)
                        ):
                            await self._reconnected.wait()
        finally:
            self._reopening = None

    async def _consumer_exists(self) -> bool:
        """Is the consumer still on the server? Not when a create failed (``_created``);
        not when the server restarted (kept in memory), nor when it removed it after its inactive
        threshold (no subscriber: a connection down that long). Else it is there, and nats-py
        subscribed its deliver subject again as it reconnected: it goes on by itself."""
        assert self.sub is not None
        if not self._created:
            return False
        try:
            await self.sub.consumer_info()
        except NotFoundError:
            return False
        return True

    async def _reopen(self) -> None:
        """A new subscription and consumer from the message after the last one received. The
        old subscription is dropped first: once its ``unsubscribe`` returned, none of its
        messages reaches the batch any more, so the next start is read after it and nothing
        comes twice or is skipped."""
        assert self.sub is not None
        with contextlib.suppress(Exception):  # dropped already (a failed earlier attempt)
            await self.sub.unsubscribe()
        if self._must_reopen and self._created:  # still on the server, unlike a lost one
            _delete_soon(self._js, self._stream, self.sub)
            self._created = False
        # None of the old subscription's messages comes any more: the new one's are kept. A
        # drop of the new one's, even while its consumer is made, sets both flags again.
        self._dropped = self._must_reopen = False
        self._consumer = None
        if self._closed:
            return
        if self._last is None:
            start = copy.copy(self._start)  # nothing received: from where it started
        else:
            start = start_config(position(self._last)[0] + 1, None, self._subjects)
        try:
            await self._open(ordered_config(self._js, start, self._subjects))
        except BaseException:
            self._must_reopen = True  # ``_reopen_if_gone`` tries again
            raise

    def close(self, stream: str) -> Coroutine[Any, Any, None] | None:
        """Stop delivering and delete the consumer (``_delete_soon``), once: what is left to
        await for the unsubscribe, or None when it was done already."""
        if self._closed or self.sub is None:
            return None
        self._closed = True
        _live_readers.discard(self)
        # Let a callback blocked on a full batch finish first.
        self._drained.set()
        return self._unsubscribe_and_delete(stream)

    async def _unsubscribe_and_delete(self, stream: str) -> None:
        assert self.sub is not None
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()
        if self._created:  # a refused create (10026) made nothing to delete
            _delete_soon(self._js, stream, self.sub)

    def close_soon(self, stream: str) -> None:
        """``close`` from a callback, in the background: a reader whose consumer must go before
        the task reading it comes back."""
        unsubscribe = self.close(stream)
        if unsubscribe is not None:
            track(asyncio.ensure_future(unsubscribe))

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the messages arrived and not taken yet."""
        return self._bytes

    def take(self) -> list[Msg]:
        """The messages that arrived since the last take, oldest first, without waiting."""
        batch, self._batch, self._bytes = self._batch, [], 0
        self._arrived.clear()
        self._drained.set()
        if self._must_reopen:  # see ``lost_messages``; cuts a failed attempt's wait short
            self.reopen_if_gone_soon(_request_turns())
        return batch

    async def next_batch(self, timeout: float | None) -> list[Msg]:
        """The messages that arrived since the last call, oldest first; waits up to ``timeout``
        seconds for at least one, and answers ``[]`` when none came (the reader is idle, or
        ``on_arrival`` took them)."""
        if not self._batch:
            # The callback never runs again on a closed connection: say so rather than idle
            # forever (``next_msg`` does the same). nats-py exposes the client only as ``_nc``.
            if self._js._nc.is_closed:
                raise ConnectionClosedError
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
        return self.take()

    async def count(self) -> int:
        """How many messages match the filter from the start on, as the server counts them now
        (one request): delivered so far plus still pending, from one snapshot, since a push
        consumer keeps delivering while we ask."""
        assert self.sub is not None
        info = await self.sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        return (info.num_pending or 0) + (delivered or 0)


# Readers by their nats-py subscription, for nats-py's report of the messages it dropped
# (``lost_messages``); weak both ways, so that neither keeps the other.
_readers: weakref.WeakKeyDictionary[Any, weakref.ref[OrderedReader]] = weakref.WeakKeyDictionary()


def lost_messages(exc: Exception) -> None:
    """Tell a reader (or a bucket watch, ``on_messages_lost``) that nats-py dropped messages of
    its subscription: ``exc`` is an error nats-py hands the connection's error callback
    (``eventstore.connect`` passes each)."""
    if isinstance(exc, SlowConsumerError):
        ref = _readers.get(exc.sub)
        reader = ref() if ref is not None else None
        if reader is not None:
            reader.lost_messages(f"nats-py dropped stream message {exc.reply}")
        watch_ref = _watches_told.get(exc.sub)
        tell = watch_ref() if watch_ref is not None else None
        if tell is not None:
            tell()


# What to call when nats-py drops a message of a bucket watch's subscription (``keywatch``), by
# its nats-py subscription; weak both ways, as ``_readers``.
_watches_told: weakref.WeakKeyDictionary[Any, weakref.WeakMethod[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def on_messages_lost(psub: JetStreamContext.PushSubscription, tell: Callable[[], None]) -> None:
    """Have ``lost_messages`` call ``tell`` (a bound method: held weakly) when nats-py drops a
    message of ``psub``."""
    _watches_told[psub._sub] = weakref.WeakMethod(tell)


def _reply_fields(msg: Msg) -> list[str]:
    """A JetStream delivery's reply subject, ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream
    seq>.<consumer seq>.<time>.<pending>`` (the v2 form adds a domain and an account hash after
    ``ACK``), from ``<stream>`` on. ``msg.metadata`` gives the same, but builds five objects and
    a datetime a message: a tenth of the API's CPU while it fans lines out."""
    tokens = msg.reply.split(".")
    return tokens[2:] if len(tokens) == 9 else tokens[4:]


def delivered_as(msg: Msg) -> tuple[str, int]:
    """A JetStream delivery's consumer, and its consumer sequence (1, 2, 3, ... for each
    consumer)."""
    fields = _reply_fields(msg)
    return fields[1], int(fields[4])


def position(msg: Msg) -> tuple[int, int]:
    """A JetStream delivery's stream sequence, and how many messages the consumer had pending
    after it."""
    fields = _reply_fields(msg)
    return int(fields[3]), int(fields[6])


def start_config(
    start_seq: int | None = None,
    start_time: datetime | None = None,
    filter_subjects: Sequence[str] | None = None,
) -> api.ConsumerConfig:
    """Deliver from ``start_time`` if given, else from ``start_seq`` (at least 1)."""
    # One subject goes in the subscription itself; several need the consumer's filter list.
    several = list(filter_subjects) if filter_subjects and len(filter_subjects) > 1 else None
    if start_time is not None:
        # A start time past the last message makes the server start at that message: callers
        # that care drop what was stored before ``start_time``.
        return api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=start_time,
            filter_subjects=several,
        )
    return api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(start_seq or 1, 1),
        filter_subjects=several,
    )


def ordered_config(
    js: JetStreamContext, config: api.ConsumerConfig, subjects: Sequence[str]
) -> api.ConsumerConfig:
    """``config`` made an ordered push consumer as ``js.subscribe(ordered_consumer=True)``
    makes it, with a deliver subject and a name of its own chosen here."""
    if not config.filter_subjects:
        config.filter_subject = subjects[0]
    config.name = _names.next().decode()
    config.deliver_subject = js._nc.new_inbox()  # nats-py exposes the client only as ``_nc``
    config.flow_control = True
    config.ack_policy = api.AckPolicy.NONE
    config.max_deliver = 1
    config.ack_wait = 22 * 3600  # 22 hours
    config.idle_heartbeat = 5
    config.num_replicas = 1
    config.mem_storage = True
    return config


@asynccontextmanager
async def ordered_reader(
    js: JetStreamContext,
    stream: str,
    subjects: str | Sequence[str],
    start_seq: int | None = None,
    start_time: datetime | None = None,
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
) -> AsyncIterator[OrderedReader]:
    """An ordered consumer on ``subjects`` from ``start_seq`` (or ``start_time``), removed on
    exit. Nothing stays on the server after it: the consumer is ephemeral."""
    subject_list = [subjects] if isinstance(subjects, str) else list(subjects)
    start = start_config(start_seq, start_time, subject_list)
    reader = OrderedReader(js, stream, subject_list, start, max_buffered_bytes)
    try:
        await reader._open(ordered_config(js, copy.copy(start), subject_list))
        _live_readers.add(reader)
        yield reader
    finally:
        # Drop the subscription even when the reader's task is being cancelled.
        unsubscribe = reader.close(stream)
        if unsubscribe is not None:
            await asyncio.shield(unsubscribe)


def keep_on(psub: JetStreamContext.PushSubscription, js: JetStreamContext) -> None:
    """Make ``psub``, a nats-py subscription (a KV watch) made on a start's context
    (``retry.start_context``: a short request timeout), send its later requests on ``js``: its
    consumer info, and the re-creations of its ordered consumer (nats-py's own, and
    ``_reopen_watch``), which must keep the connection's timeout, not the start's."""
    psub._js = js
    jsi = psub._sub._jsi
    if jsi is not None:
        jsi._js = js


# The ordered readers open now, for ``reopen_after_reconnect``.
_live_readers: weakref.WeakSet[OrderedReader] = weakref.WeakSet()


def reopen_after_reconnect(nc: Any) -> int:
    """Called once nats-py has reconnected ``nc``: each ordered consumer on it, our readers
    (``reopen_if_gone_soon``) and nats-py's own (a KV watch: the runners' lock board, the
    API's token watch; ``_reopen_watch_soon``), asks whether its consumer is still on the
    server and is made again, from the message after the last one received, only if not; in
    the background, ``REQUESTS_AT_ONCE`` at a time, a failed attempt tried again. A restarted
    server lost them (kept in memory), and nats-py would notice only when its activity check
    finds two idle heartbeats missed: 10 to 20 s of a silent SSE stream, or of a runner's lock
    board blind to a freed slot. A server that did not restart (a connection cut, another node
    of a cluster) still has them: they go on, and no second consumer takes a place under the
    stream's consumer limit. How many ask (one request each, a create more for each one gone)."""
    turns = _request_turns()
    readers = sum(
        1
        for reader in list(_live_readers)
        if reader._js._nc is nc and reader.reopen_if_gone_soon(turns)
    )
    return readers + sum(1 for jsi in _watches(nc) if _reopen_watch_soon(jsi, turns))


# --- nats-py's own ordered consumers (KV watches) after a reconnect
#
# Made again with nats-py's ordered-consumer state and its ``reset_ordered_consumer`` (what its
# own activity check does 10 to 20 s later): a watch's subscription and the queue its messages
# go through are nats-py's, only it can move them to a new deliver subject. What is read of it is
# checked by tests/unit/test_natspy_private_state.py.

# The watches whose check is under way (one at a time each), each with the event a reconnect sets
# to cut its wait before trying again short (``OrderedReader._reconnected``'s, for a watch).
_watches_reopening: weakref.WeakKeyDictionary[Any, asyncio.Event] = weakref.WeakKeyDictionary()


def _watches(nc: Any) -> list[Any]:
    """nats-py's state (``_JSI``) of each ordered subscription on ``nc`` that is not a reader's.
    A reader's (its messages go to ``OrderedReader._on_message``, a closing reader's too) is its
    own to open again, or not: never touched here."""
    return [
        jsi
        for sub in list(nc._subs.values())
        if (jsi := sub._jsi) is not None
        and jsi._ordered
        and not isinstance(getattr(sub._cb, "__self__", None), OrderedReader)
    ]


def _watching(jsi: Any) -> bool:
    """Whether the watch is still subscribed (``stop`` drops it from its client)."""
    return bool(jsi._conn._subs.get(jsi._sub._id) is jsi._sub)


def _reopen_watch_soon(jsi: Any, turns: asyncio.Semaphore) -> bool:
    """``OrderedReader.reopen_if_gone_soon`` for a watch: False when a check is under way (it
    tries again now, not after the rest of its wait)."""
    reconnected = _watches_reopening.get(jsi)
    if reconnected is not None:
        reconnected.set()
        return False
    reconnected = _watches_reopening[jsi] = asyncio.Event()
    track(asyncio.ensure_future(_reopen_watch_if_gone(jsi, turns, reconnected)))
    return True


async def _reopen_watch_if_gone(
    jsi: Any, turns: asyncio.Semaphore, reconnected: asyncio.Event
) -> None:
    """The rule of ``OrderedReader._reopen_if_gone``, for a watch: its consumer made again only
    when the server no longer has it, a failed check or create tried again."""
    failures = 0
    try:
        while _watching(jsi) and not jsi._conn.is_closed:
            reconnected.clear()  # a reconnect from now on: no wait after a failure
            try:
                async with turns:
                    if _watching(jsi) and not await _watch_consumer_exists(jsi._psub):
                        await _reopen_watch(jsi, reconnected)
                return
            except Exception as exc:
                failures += 1
                if failures == 1:
                    structlog.get_logger().warning(
                        "ordered watch not opened again yet", error=repr(exc)
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(
                        min(REOPEN_RETRY_SECONDS * 2 ** (failures - 1), 5.0)
                    ):
                        await reconnected.wait()
    finally:
        _watches_reopening.pop(jsi, None)


async def _watch_consumer_exists(psub: JetStreamContext.PushSubscription) -> bool:
    try:
        await psub.consumer_info()
    except NotFoundError:
        return False
    return True


class WatchNotMadeAgain(Exception):
    """A watch's new consumer was not made: the connection reconnected before its create's reply
    came (a reply that may never come), or a later reset moved the watch on meanwhile."""


async def _reopen_watch(jsi: Any, reconnected: asyncio.Event) -> None:
    # Its start read in the same step as nats-py drops the old deliver subject (before its first
    # await): every message up to ``_sseq`` is in the subscription's queue already and is still
    # delivered from there, none after it comes from the old consumer. Nothing twice, nothing
    # skipped.
    reconnected.clear()  # one before the create went out cost it nothing
    made: asyncio.Future[api.ConsumerInfo] = asyncio.get_running_loop().create_future()
    made.add_done_callback(_retrieved)  # a reply after the wait below gave up is nobody's
    # nats-py makes the new consumer in a task of its own and hands a refusal only to the
    # client's error callback: waiting for the consumer to show up, a refused create (the
    # stream's consumer limit, JetStream not ready) was seen only after the create's request
    # timeout (5 s). For this one reset the task is ours, and tells its outcome as it comes.
    jsi.recreate_consumer = functools.partial(_make_watch_consumer, jsi, made)
    try:
        await jsi.reset_ordered_consumer(jsi._sseq + 1)
    finally:
        del jsi.recreate_consumer  # nats-py's own again, for its activity check's resets
    cut_short = asyncio.ensure_future(reconnected.wait())
    try:
        await asyncio.wait((made, cut_short), return_when=asyncio.FIRST_COMPLETED)
    finally:
        cut_short.cancel()
    if not made.done():
        raise WatchNotMadeAgain(f"{jsi._stream}: reconnected before the create's reply")
    made.result()  # raises the refusal, for the caller's retry


async def _make_watch_consumer(jsi: Any, made: asyncio.Future[api.ConsumerInfo]) -> None:
    """nats-py's ``recreate_consumer``, its outcome set on ``made`` instead of a refusal going
    to the client's error callback. The new consumer is named on the watch only if no later
    reset chose another deliver subject meanwhile (its consumer would take the name)."""
    deliver = jsi._ccreq.deliver_subject
    try:
        info = await jsi._js.add_consumer(jsi._stream, config=jsi._ccreq, timeout=jsi._js._timeout)
    except Exception as exc:
        if not made.done():
            made.set_exception(exc)
        return
    if jsi._ccreq.deliver_subject != deliver:
        if not made.done():
            made.set_exception(WatchNotMadeAgain(f"{jsi._stream}: moved on from {deliver}"))
        return
    jsi._psub._consumer = info.name
    if not made.done():
        made.set_result(info)


def _retrieved(made: asyncio.Future[Any]) -> None:
    if not made.cancelled():
        made.exception()


# Consumer deletions under way (``delete_consumer_soon``), the readers' background unsubscribes
# and their checks after a reconnect: a task nobody references may be collected, and a stopping
# process cancels them (``forget_deletes``).
_deleting: set[asyncio.Future[Any]] = set()
# Background requests (deletions, the checks and creates after a reconnect) sent at once, per
# event loop: each is a request to JetStream's API, which handles them in order, so 1,500 viewers
# leaving (or reconnecting) at once would queue ahead of the next viewers' creates.
REQUESTS_AT_ONCE = 4
_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
# A reader's first retry after a failed check or create following a reconnect (then doubled, up
# to 5 s): about nats-py's own reconnect wait (0.25 s), so a server whose JetStream is still
# starting is asked again soon, and one refusing is not hammered.
REOPEN_RETRY_SECONDS = 0.25


def _request_turns() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = asyncio.Semaphore(REQUESTS_AT_ONCE)
    return turns


def track(task: asyncio.Future[Any]) -> None:
    """Keep ``task``, a background NATS request (a clean-up), until it ends; a stopping
    process cancels it (``forget_deletes``)."""
    _deleting.add(task)
    task.add_done_callback(_deleting.discard)


def _delete_soon(js: JetStreamContext, stream: str, sub: Any) -> None:
    """Delete the reader's consumer now rather than when the server notices that nobody
    listens (about 5 s later for an ephemeral push consumer): until then it still counts
    against the stream's ``max_consumers``, and a crowd of viewers that came and went would
    hold the places the next ones need."""
    name = getattr(sub, "_consumer", None)  # nats-py's current one (a gap makes another)
    if name:
        delete_consumer_soon(js, stream, name)


def delete_consumer_soon(js: JetStreamContext, stream: str, name: str) -> None:
    """Delete consumer ``name`` in the background, so that no reader waits for it, and
    ``REQUESTS_AT_ONCE`` at a time; a failed one (NATS away, or gone already) leaves the
    server's own clean-up to do it (after its inactive threshold)."""
    turns = _request_turns()

    async def delete() -> None:
        async with turns:
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, name)

    track(asyncio.get_running_loop().create_task(delete()))


def deletes_pending() -> int:
    return len(_deleting)


# How long a stopping process waits for its background requests after their cancel: a request
# in flight whose cancel was lost (nats-py swallows one that arrives while it flushes, 3.11's
# wait_for one that comes with the reply) ends by nats-py's request timeout (5 s), and 2 s for a
# loaded event loop. A check after a reconnect that lost its cancel would retry for as long as
# NATS stays away: past the bound it is left, and logged; the connection's close, which follows,
# ends it (its loop stops on a closed connection).
FORGET_DELETES_SECONDS = 7.0


async def forget_deletes(within: float | None = None) -> None:
    """Cancel the deletions still waiting (a process stopping: the server removes the
    consumers itself, about 5 s after their subscriptions went) and the checks after a
    reconnect, and wait for them ``within`` seconds at most (``FORGET_DELETES_SECONDS``)."""
    within = FORGET_DELETES_SECONDS if within is None else within
    loop = asyncio.get_running_loop()
    pending = [task for task in _deleting if task.get_loop() is loop]
    for task in pending:
        task.cancel()
    # An error after the stop is nobody's to report.
    await wait_within(
        pending,
        within,
        "background NATS requests did not end on their cancel: left running",
        errors_retrieved=True,
    )


async def last_message(js: JetStreamContext, stream: str, subject: str) -> api.RawStreamMsg | None:
    """The newest stored message on ``subject``, or ``None`` when it has none."""
    try:
        return await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None


class StoredMessage(msgspec.Struct):
    """A message as JetStream's message-get answers it: its stream sequence and its data."""

    seq: int = 0
    data: bytes = b""  # base64 in the reply's JSON


class _MessageGetReply(msgspec.Struct):
    message: StoredMessage | None = None
    error: dict[str, Any] | None = None


_message_get_reply = msgspec.json.Decoder(_MessageGetReply)


def _no_jetstream() -> ServiceUnavailableError:
    """No JetStream answered (a server whose JetStream is still starting, say): an error with
    its 503 code, so that retries (``retry.is_transient``) send the request again."""
    return ServiceUnavailableError(code=503, description="no JetStream responders")


async def last_stored(
    inbox: AckInbox, js: JetStreamContext, stream: str, subject: str
) -> StoredMessage | None:
    """``last_message`` through a connection's ack inbox (``ackinbox.AckInbox.request``), the
    reply decoded by msgspec: the request ``js.get_last_msg`` sends, None where it raises
    NotFoundError, its other errors; without nats-py's request path, its JSON parse and its
    parse of the stored message's headers (an email parser; every event has one), which the
    callers never look at."""
    return await _message_get(inbox, js, stream, {"last_by_subj": subject})


async def next_stored(
    inbox: AckInbox, js: JetStreamContext, stream: str, subject: str, seq: int
) -> StoredMessage | None:
    """The first message on ``subject`` at stream sequence ``seq`` or after it, as
    ``last_stored`` reads the newest (``js.get_msg(..., next=True)`` without its cost), or None
    when there is none."""
    return await _message_get(inbox, js, stream, {"seq": seq, "next_by_subj": subject})


async def _message_get(
    inbox: AckInbox, js: JetStreamContext, stream: str, request: dict[str, Any]
) -> StoredMessage | None:
    reply = await inbox.request(
        f"{js._prefix}.STREAM.MSG.GET.{stream}", msgspec.json.encode(request)
    )
    if reply.headers and reply.headers.get("Status") == "503":
        raise _no_jetstream()
    answer = _message_get_reply.decode(reply.data)
    if answer.error is not None:
        try:
            APIError.from_error(answer.error)  # raises the error's own type
        except NotFoundError:
            return None
    return answer.message


# At most this many messages per fetch of a shared consumer: a backlog (old requests after an
# outage, a history's job ends) is taken many messages per round trip instead of one, while
# instances sharing the consumer still each get a part of a burst.
FETCH_MOST = 16


async def fetch_some(
    sub: JetStreamContext.PullSubscription,
    capacity: asyncio.Semaphore,
    stop: asyncio.Event | None = None,
    most: int = FETCH_MOST,
) -> list[Msg]:
    """The next messages of a shared pull consumer, each taken with one unit of ``capacity``.

    One unit is waited for; then as many more as are free at once (up to ``most``) are taken
    and asked for in the same fetch, which returns with what the consumer has at that moment
    (at least one message). Returns the messages with one unit held for each (the caller
    releases each when its work is done; units no message came for are given back), or an empty
    list, every unit given back, when nothing came within ``FETCH_SECONDS`` or the fetch failed
    (NATS away: logged, and a short pause so that a loop around this does not spin).

    Returns an empty list at once when ``stop`` is set while it waits for a unit of capacity (a
    stopping service stops its work rather than waiting for some of it to end). A fetch under
    way is never abandoned: its pull request would stay open at the server, which would hand the
    next message (say one another instance of the service just gave back) to this stopped
    client, and the message would wait there for the consumer's ack wait. Waiting it out costs a
    stop at most ``FETCH_SECONDS``, which is kept short for that. (Unsubscribing the inbox would
    end the request at once, as nats-server hands messages only to requests whose reply subject
    has interest, but a message it already chose for this client in that moment, or a give-back
    racing the unsubscribe on another node of a cluster, would then wait out the ack wait.)"""
    if not await unless_stopped(capacity.acquire(), stop):
        return []
    units = 1
    while units < most and not capacity.locked():
        await capacity.acquire()  # free: returns at once
        units += 1
    try:
        msgs = await sub.fetch(units, timeout=FETCH_SECONDS)
    except (NatsTimeoutError, TimeoutError):
        msgs = []
    except Exception as exc:
        _release(capacity, units)
        structlog.get_logger().warning("fetch failed", error=repr(exc))
        await asyncio.sleep(0.5)
        return []
    _release(capacity, units - len(msgs))
    return msgs


def waiting_after(msg: Msg) -> bool:
    """Did the consumer have more messages waiting when it delivered ``msg``? A loop around
    :func:`fetch_some` asks for several only then: asked of an idle consumer, a fetch of several
    first probes for waiting ones (a round trip that finds none), then holds the first message
    that comes until the rest came or the pull expired (up to ``FETCH_SECONDS``)."""
    try:
        return msg.metadata.num_pending > 0
    except Exception:  # not a JetStream delivery: as if none were waiting
        return False


async def handle_each(
    sub: JetStreamContext.PullSubscription,
    capacity: asyncio.Semaphore,
    stop: asyncio.Event,
    handle: Callable[[Msg], Coroutine[Any, Any, Any]],
    tasks: set[asyncio.Task[Any]],
) -> None:
    """Until ``stop``: the shared consumer's messages (:func:`fetch_some`), each handled by
    ``handle`` in a task of its own, held in ``tasks`` while it runs (the caller stops them).

    Several per fetch only while messages are waiting (:func:`waiting_after`): a backlog is
    taken without a round trip for each message, and a lone message is not held until the rest
    of a fetch of several came or the pull expired."""
    most = 1
    while not stop.is_set():
        msgs = await fetch_some(sub, capacity, stop, most)
        most = FETCH_MOST if msgs and waiting_after(msgs[-1]) else 1
        for msg in msgs:
            task = asyncio.create_task(handle(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def _release(capacity: asyncio.Semaphore, units: int) -> None:
    for _ in range(units):
        capacity.release()


async def fetch_one(
    sub: JetStreamContext.PullSubscription,
    capacity: asyncio.Semaphore,
    stop: asyncio.Event | None = None,
) -> Msg | None:
    """The next message of a shared pull consumer, taken with one unit of ``capacity``; None
    (the unit given back) as :func:`fetch_some` returns no message."""
    msgs = await fetch_some(sub, capacity, stop, most=1)
    return msgs[0] if msgs else None
