"""Publishing to JetStream with its ack awaited, at a small cost per message: one wildcard inbox
subscription per connection receives every ack, each found by a counter token.

nats-py's ``js.publish`` is a ``request`` per message: a NUID and a random token (a system
call), a future with a done-callback, ``wait_for``'s own future and timer, the subject checked
twice, and the ack parsed by ``json`` into a dict and then a dataclass. The runner publishes
thousands of small messages a second (100 jobs printing lines), and paid more for that than for
the lines themselves. Here a message costs a dict entry and a future, the ack decodes with
msgspec, and the acks' timeout is one timer for all of them.

What goes out is what ``js.publish`` sends (subject, payload, the Nats-Msg-Id header, a reply
subject), and a publish fails as it does there, so that retries tell the errors apart the same
way: no ack within the timeout raises ``nats.errors.TimeoutError``, no stream listening
``NoStreamResponseError``, JetStream's refusal its ``APIError``. The inbox is subscribed again
by nats-py after a reconnect, so an ack that crosses a reconnect still arrives.

An ack the connection's drop lost (a NATS restart: the server that would have answered is gone)
never arrives. When nats-py has connected again (``reconnected``, from its reconnected
callback) every publish still waiting that went out on an earlier connection fails at once with
``AckLostWithConnection``, a ``nats.errors.TimeoutError``: each caller's retry, which already
sends a publish again after a timeout (with the same Nats-Msg-Id, so that JetStream keeps one
copy), sends it now instead of after the ack timeout. Which connection a publish went out on is
nats-py's count of connections made (``stats["reconnects"]``, counted once the new server has
accepted CONNECT, before nats-py sends what it held meanwhile), the next one for a publish made
while away (nats-py holds it and sends it there): a publish on the new connection, or held for
it, gets its ack and is left to wait. Two edges: a publish made while connected but still in
nats-py's pending buffer when the connection drops goes out on the new connection and is failed
all the same (one copy sent again: JetStream drops it by its Nats-Msg-Id, and a conditional KV
write's copy is refused as already applied, which its callers read as such); and a publish made
just after the drop was noticed that nats-py's flusher, already woken, writes to the dead socket
is lost without being failed, and waits out its ack timeout before its caller sends it again.

An ack resolves its publish from nats-py's parser (``_Handover``), not through a subscription's
queue and the task that waits on it: that was a queue put, a wake-up of that task and a turn of
the loop for every message published, before the publisher's own wake-up.

The lock bucket's writes (``slots.SlotTable``: a KV write is a JetStream publish to
``$KV.<bucket>.<key>`` with its own headers, no Nats-Msg-Id) come this way too; a write with a
shorter timeout of its own (a lease renewal's) has a timer of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from jobrunner.common import messagesize, retry
from jobrunner.contracts import codec, events
from jobrunner.contracts.codec import MSG_ID_HEADER
from jobrunner.contracts.names import Names

log = structlog.get_logger()

# As long as js.publish waits for an ack by default (nats-py's JetStream API timeout).
ACK_TIMEOUT = 5.0

_STATUS = "Status"
_NO_RESPONDERS = "503"


class PubAck(msgspec.Struct):
    """JetStream's answer to a publish: where the message is stored (``duplicate``: its id
    was stored before, within the stream's duplicate window), or why it was refused."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_decoder = msgspec.json.Decoder(PubAck)

_inboxes: weakref.WeakKeyDictionary[NATS, AckInbox] = weakref.WeakKeyDictionary()
# Every inbox of a connection (``of``'s and those made apart, such as the bulk lane's), told of
# its reconnects.
_every_inbox: weakref.WeakKeyDictionary[NATS, weakref.WeakSet[AckInbox]] = (
    weakref.WeakKeyDictionary()
)


class AckLostWithConnection(nats.errors.TimeoutError):
    """The publish went out on a connection that dropped before its ack came: the ack will never
    come (the message may be stored or not). A timeout that came early: retried as one, with the
    same Nats-Msg-Id."""

    def __str__(self) -> str:
        return "nats: the connection dropped before the ack came"


def of(nc: NATS) -> AckInbox:
    """The connection's ack inbox (one per connection, made on first use, with the ack timeout
    ``ACK_TIMEOUT`` says then: a test may lengthen it)."""
    inbox = _inboxes.get(nc)
    if inbox is None:
        inbox = _inboxes[nc] = AckInbox(nc, ACK_TIMEOUT)
    return inbox


class AckInbox:
    def __init__(self, nc: NATS, timeout: float = ACK_TIMEOUT) -> None:
        # Weak: the registry above keeps an inbox while its connection lives, not the reverse.
        self._nc = weakref.proxy(nc)
        _every_inbox.setdefault(nc, weakref.WeakSet()).add(self)
        self._timeout = timeout
        self._prefix = ""  # the inbox subject and a dot, once subscribed
        self._subscription: Subscription | None = None
        self._opening: asyncio.Future[None] | None = None
        self._tokens = itertools.count()
        # token -> (deadline, future, the connection it went out on: ``_connection``); in the
        # order published, so the oldest come first
        self._waiting: dict[str, tuple[float, asyncio.Future[Msg], int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        # token -> (future, connection) of a publish with a timeout of its own (and a timer of
        # its own), or of a pipeline's publish, whose caller bounds its wait (no timer)
        self._timed: dict[str, tuple[asyncio.Future[Msg], int]] = {}

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> PubAck:
        """Publish with the Nats-Msg-Id ``msg_id`` and wait for JetStream to store it."""
        return await self._publish_waiting(subject, payload, {MSG_ID_HEADER: msg_id})

    async def publish_headed(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        timeout: float | None = None,
    ) -> PubAck:
        """Publish with ``headers`` (none added) and wait for JetStream to store it, as
        ``js.publish(subject, payload, headers=headers, timeout=timeout)`` does: no ack within
        ``timeout`` (the inbox's by default) raises ``nats.errors.TimeoutError``."""
        if timeout is None or timeout == self._timeout:
            return await self._publish_waiting(subject, payload, headers)
        if not self._subscribed():
            await self._open()
        loop = asyncio.get_running_loop()
        token = str(next(self._tokens))
        future: asyncio.Future[Msg] = loop.create_future()
        self._timed[token] = (future, self._connection())
        timer = loop.call_later(timeout, _time_out, future)
        try:
            messagesize.check_fits(self._nc, payload, headers)
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await future
        finally:
            timer.cancel()
            self._timed.pop(token, None)
        return read_ack(msg)

    async def request(self, subject: str, payload: bytes) -> Msg:
        """Send a request (say a JetStream API call) and wait for its reply on the inbox, as
        ``nc.request`` does: no reply within the inbox's timeout raises
        ``nats.errors.TimeoutError``; the reply is returned as it came (a no-responders status
        included)."""
        return await self._reply_to(subject, payload, None)

    async def _publish_waiting(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> PubAck:
        return read_ack(await self._reply_to(subject, payload, headers))

    async def publish_soon(self, subject: str, payload: bytes, msg_id: str) -> asyncio.Future[Msg]:
        """Publish with the Nats-Msg-Id ``msg_id`` and return at once the future of its ack
        (``read_ack`` of its result is what ``publish`` returns; no ack within the inbox's
        timeout is ``nats.errors.TimeoutError``). For a caller with other things to wait for
        before it needs the ack (a job's publisher, until its next tick): nothing wakes it when
        the ack arrives."""
        return await self.publish_headed_soon(subject, payload, {MSG_ID_HEADER: msg_id})

    async def publish_headed_soon(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[Msg]:
        """Publish with ``headers`` (none added) and return at once the future of its ack, as
        ``publish_soon`` does: for a caller that sends several writes, in an order that matters,
        before it waits for any of their acks."""
        return (await self._send(subject, payload, headers))[1]

    async def publish_pipelined(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[Msg]:
        """As ``publish_headed_soon``, but the future has no deadline of the inbox's: a caller
        that sends a pipeline of publishes, then waits for each ack in turn, bounds each wait
        itself (counted from when it begins waiting, not from the send: the acks of a long
        pipeline come one after another). A cancelled future drops its entry; a reconnect
        fails it (``AckLostWithConnection``)."""
        if not self._subscribed():
            await self._open()
        token = str(next(self._tokens))
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._timed[token] = (future, self._connection())
        future.add_done_callback(lambda _: self._timed.pop(token, None))
        try:
            messagesize.check_fits(self._nc, payload, headers)
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            future.cancel()
            raise
        return future

    async def _reply_to(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Msg:
        token, future = await self._send(subject, payload, headers)
        try:
            return await future
        finally:
            self._waiting.pop(token, None)

    async def _send(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> tuple[str, asyncio.Future[Msg]]:
        """Publish with the inbox as the reply subject: the token and the future of the reply
        (the ack pops its entry, as does its expiry)."""
        if not self._subscribed():
            await self._open()
        loop = asyncio.get_running_loop()
        token = str(next(self._tokens))
        future: asyncio.Future[Msg] = loop.create_future()
        # The connection read before the publish, which can await: one made meanwhile may have
        # lost it (the message written to the old socket); should it have gone out on the new
        # one instead, it is sent again and JetStream drops the copy.
        self._waiting[token] = (loop.time() + self._timeout, future, self._connection())
        try:
            messagesize.check_fits(self._nc, payload, headers)
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._waiting.pop(token, None)
            raise
        if self._timer is None:
            self._timer = loop.call_later(self._timeout, self._expire)
        return token, future

    def _connection(self) -> int:
        """Which connection of the client a publish made now goes out on, by nats-py's count
        of reconnects (it moves once a new server has accepted CONNECT). While connected, the
        current one; while away, the next one: nats-py holds the message and sends it there
        before its reconnected callback, and its ack comes (failing it would only make its
        caller send it again: a lease renewal then reads the key and writes once more)."""
        count = int(self._nc.stats["reconnects"])
        return count if self._nc.is_connected else count + 1

    def reconnected(self) -> None:
        """nats-py has connected again (from its reconnected callback: by then it has sent what
        it held meanwhile, and had the server's PONG). Every publish still waiting that went out
        on an earlier connection fails at once with ``AckLostWithConnection``: its ack went with
        that connection. What it held while away went out before this, so a copy sent again by
        the caller comes after it on the connection and is the one JetStream drops."""
        current = self._connection()
        lost = AckLostWithConnection
        for token, (_, future, connection) in list(self._waiting.items()):
            if connection < current:
                del self._waiting[token]
                if not future.done():
                    future.set_exception(lost())
        for token, (future, connection) in list(self._timed.items()):
            if connection < current:
                del self._timed[token]
                if not future.done():
                    future.set_exception(lost())

    def _subscribed(self) -> bool:
        """Whether the inbox's subscription is the connection's. nats-py subscribes it again
        after a reconnect, but forgets every subscription when the connection is closed: a
        client connected again after a close needs the inbox anew (as nats-py's own request
        inbox does). Its table of subscriptions is private; a lookup costs next to nothing."""
        sub = self._subscription
        return sub is not None and self._nc._subs.get(sub._id) is sub

    async def publish_until_stored(self, names: Names, event: events.Publishable) -> PubAck:
        """Publish an event until JetStream stores it: NATS being away is waited out, a refusal
        that can never pass raises ``retry.PublishRefused`` at once; every try carries the
        event's id, so JetStream keeps one copy (the ack of a copy says where the first is)."""
        subject = names.subject(event)
        data = codec.encode(event)
        what = f"event {type(event).__name__} {event.event_id} on {subject}"
        return await retry.until_done(lambda: self.publish(subject, data, event.event_id), what)

    async def _open(self) -> None:
        # Jobs starting together share the one subscription (and one failure, should the
        # connection be closed or draining: each of them gets nats-py's error, as from
        # js.publish, and the next publish tries again).
        opening = self._opening
        if opening is None or opening.done():
            opening = self._opening = asyncio.ensure_future(self._subscribe())
        try:
            await asyncio.shield(opening)
        except BaseException:
            if self._opening is opening and opening.done():
                self._opening = None
            raise

    async def _subscribe(self) -> None:
        prefix = f"{self._nc.new_inbox()}."
        # No callback: nats-py starts no task for the subscription, and its queue is replaced
        # before any ack can arrive (the subject is new, nothing was published to it yet). No
        # bytes limit: nothing is ever pending.
        sub = await self._nc.subscribe(prefix + "*", pending_bytes_limit=0)
        sub._pending_queue = _Handover(sub, self._on_ack)
        self._subscription = sub
        self._prefix = prefix

    def _on_ack(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        entry = self._waiting.pop(token, None)
        if entry is not None:
            future = entry[1]
        else:
            timed = self._timed.pop(token, None)
            if timed is None:
                return  # late: its publish timed out, or its connection was lost
            future = timed[0]
        if not future.done():
            future.set_result(msg)

    def _expire(self) -> None:
        """Fail the publishes whose ack is overdue; the timer then waits for the oldest left.
        Waiting publishes are in deadline order because they are in the order published and
        every one waits the inbox's one timeout."""
        now = asyncio.get_running_loop().time()
        while self._waiting:
            token, (deadline, future, _) = next(iter(self._waiting.items()))
            if deadline > now:
                self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)
                return
            del self._waiting[token]
            if not future.done():
                future.set_exception(nats.errors.TimeoutError())
        self._timer = None


class _Handover(asyncio.Queue[Msg]):
    """A subscription's pending queue that holds nothing: nats-py's parser puts each message
    of the subscription here (``Client._process_msg``; the one private name is
    ``Subscription._pending_queue``), and it goes to ``deliver`` at once. Empty as a queue
    always, so nats-py's draining and counting of it work unchanged."""

    def __init__(self, sub: Subscription, deliver: Callable[[Msg], None]) -> None:
        super().__init__()
        self._sub = sub
        self._deliver = deliver

    def put_nowait(self, item: Msg) -> None:
        # nats-py counts what it queues against the (disabled) bytes limit; nothing stays queued.
        self._sub._pending_size = 0
        try:
            self._deliver(item)
        except Exception:
            # This runs inside nats-py's read loop, which stops reading for good on an
            # exception while the connection still looks up: log it, as nats-py does for a
            # subscription's callback, and read on.
            log.exception("an ack could not be handed to its publish")


def _time_out(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


def reconnected(nc: NATS) -> None:
    """Tell the connection's ack inboxes, if it has any, that nats-py has connected again."""
    for inbox in list(_every_inbox.get(nc, ())):
        inbox.reconnected()


def read_ack(msg: Msg) -> PubAck:
    """The ack of a publish, or the error JetStream answered with (raised as ``js.publish``
    raises it)."""
    if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
        raise nats.js.errors.NoStreamResponseError
    ack = _decoder.decode(msg.data)
    if ack.error is not None:
        raise nats.js.errors.APIError.from_error(ack.error)
    return ack
