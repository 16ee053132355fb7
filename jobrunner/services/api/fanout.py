"""One JetStream subscription per job per API process, broadcast to every SSE client of that job.

A job's feed is an ordered consumer that starts when the first client of the job arrives: at the
stream's end, or, for a job with a short past, at that client's start (a point in the stored past:
a ``Last-Event-ID`` ahead of the stream is refused before), so that the first line of a job just
started needs no history read. Where a feed starts never changes what any client receives, only
what it reads first: each event is decoded and turned into SSE frames once, then handed to every
client of the feed. A client that needs events from before the feed's position when it joins (a
resume point, a late joiner) first reads those from JetStream with its own short-lived ordered
consumer, then continues with the feed, skipping what it already sent: gap-free and
duplicate-free. While a feed has handed on little since it started, it keeps what it handed on
(its record): a client whose start lies inside the record gets those events from memory instead
of a consumer of its own. A thousand viewers arriving as a job starts then cost one consumer, not
a thousand created at once (which JetStream's API answers slowly, or not in time, under load).

Memory is bounded in bytes, per client and for the whole process (records too: a feed whose
record would grow past ``Limits.record_bytes``, or all records past a sixteenth of the process's
total, drops it for good; a recorded event costs several times its frames' bytes in Python
objects, so records are kept small). A client whose backlog grows
past its share, or the client with the largest backlog when the process's total is over its cap,
is cut: its backlog is dropped at once and its stream closes without ``done``, so its browser
reconnects with ``Last-Event-ID`` and resumes exactly where it stopped. A history read that stalls
does the same rather than leave a silent gap. Before that, a feed whose every client is behind
(``PAUSE_BYTES``, or without room for the next piece) waits for them: a viewer slower than a
flood is then paced, not cut; only one that takes nothing for ``Limits.history_idle`` is left to
its limit and cut.

A feed waiting for events hands a small arrival (``QUIET_BYTES``: a quiet job's line) on in the
subscription's callback instead of waking its own task: beside a flood, each turn of the event
loop a quiet line waits for holds a step of each of the flood's tasks.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_left
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from jobrunner.common import metrics
from jobrunner.common.consumerlimit import ConsumerLimitRetry
from jobrunner.common.subscription import (
    DEFAULT_MAX_BUFFERED_BYTES,
    OrderedReader,
    ordered_reader,
    position,
)
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.services.api.readerconnections import ReaderConnections

log = structlog.get_logger()

# With many clients, events are handed over in batches, at most this often per client: one
# write per client per batch instead of one per event keeps the cost per event flat (the CPU of
# a write, not of an event, is what a broadcast to hundreds of sockets spends). The window counts
# every client of the process, not only the job's: 100 jobs with 10 viewers each cost as many
# writes as one job with 1,000, and with a window per job's clients they made the process write
# once per event per client (2 ms windows for events 5 ms apart) and fall seconds behind.
# The process' budget is 20,000 writes a second (about 10 µs each, 0.2 of a core): a window of
# 50 ms at 1,000 clients. At 10,000 (100 ms windows, sessions 8-21) the window was most of what
# the 100 jobs x 10 clients row waited between JetStream and its clients, for about 0.05 of a
# core saved (bench/RESULTS.md, session 22).
COALESCE_PER_CLIENT = 1 / 20_000  # seconds of batching window per client of the process ...
COALESCE_MAX = 0.1  # ... up to this (a few clients get every event at once)
# A burst from JetStream is handed over in pieces of about this size, letting clients write
# between them: a backlog then counts what a client cannot keep up with, not the burst's size.
HAND_OVER_BYTES = 256 * 1024
# A client's stream takes at most about this much of its inbox per turn of the event loop: a
# flood's viewer, behind by megabytes, then joins, writes and frees a piece at a time (one 8 MiB
# take held the loop for tens of ms), and the other streams' lines go out in between. Each hop of
# a quiet job's line waits for one such step of the flood's viewer: 64 KiB, not 256 KiB, lowered
# the API's CPU between a quiet line's arrival and its write (p90 and p99) beside a flood.
TAKE_BYTES = 64 * 1024
# Backpressure: a feed whose every client is this far behind reads no further until one of them
# takes (its data then waits in NATS, held back by flow control, not in the API). A flood's
# viewer reading slower than the flood prints was otherwise handed the flood's whole rate until
# its backlog passed its limit and it was cut, every few seconds, with a history read to resume.
# Half a client's limit when that is smaller; and a piece is handed over only once a client has
# room for it whole under its limit (``JobFeed._behind``), so that a slow client is not cut.
PAUSE_BYTES = 4 * HAND_OVER_BYTES
# A feed's burst is handed over after HAND_OVER_BYTES or this much work, whichever comes first:
# a flooding job's burst then holds the process for about one message at a time (decoding and
# framing a 1,000-line message is one unit, about a millisecond), and the other jobs' feeds and
# clients go in between.
TURN_SECONDS = 0.00025
# A feed waiting for its next events hands on what arrives in the subscription's callback when
# it is this small (a quiet job's line or two): one turn of the event loop sooner than its own
# task would, and beside a flood every turn holds a step of each of the flood's tasks (its
# connection's reads, its feed, its viewer's writes). A larger arrival waits for the feed's
# task, so that the callback never holds the loop long.
QUIET_BYTES = 16 * 1024
# The room a client needs for such an arrival's frames: at most about twice its message's size
# (a terminal status is framed twice, as ``status`` and ``done``), with room to spare.
QUIET_FRAMES_BYTES = 4 * QUIET_BYTES
# A large LineLogged (a flood's) is framed this many lines per step of its feed's task, the other
# jobs' feeds and clients in between: framing a 1,000-line message was the largest step in the
# API's loop beside a flood (its decoding, about a third of it, stays one step).
FRAME_LINES = 250

FrameBuilder = Callable[[events.AnyEvent, int, int | None], list[bytes]]
# The frames of lines [first, stop) of a LineLogged at a stream sequence, ids as in the whole's.
LineFramer = Callable[[events.LineLogged, int, int, int], list[bytes]]


@dataclass(frozen=True)
class Limits:
    """How much an API process buffers for its SSE clients (README "SSE protocol")."""

    keepalive: float
    client_bytes: int  # one client's backlog
    total_bytes: int  # every client's backlog together
    history_idle: float  # a history read that gets nothing for this long is given up
    # What one feed keeps of what it handed on since it started, for clients joining after it.
    # 1 MiB each let 100 jobs of 4,000 lines keep all of them: about 280 MiB more in the process.
    record_bytes: int = 64 * 1024
    # Catch-up reads from JetStream at once (each holds a consumer); more wait their turn.
    history_reads: int = 256


class Item:
    """One event of a job's stream, with its frames encoded once for every client.

    Items wait in inboxes and records while the process is behind, a hundred thousand objects
    and more, and the cycle collector walks every tracked object alive at each of its passes:
    the frames are a tuple of bytes, which it stops tracking at its first pass, and a
    LineLogged and its lines are structs it never tracks (``events.LogLine``)."""

    __slots__ = ("chunk", "event", "frames", "seq", "terminal")

    def __init__(self, seq: int, event: events.AnyEvent, frames: list[bytes]) -> None:
        self.seq = seq
        self.event = event
        self.frames = tuple(frames)
        self.chunk = b"".join(frames)
        self.terminal = isinstance(event, events.StatusChanged) and event.status.is_terminal

    def chunk_after_line(self, index: int | None) -> bytes:
        """The frames, without the lines up to ``index`` (a resume inside a batch)."""
        if index is None or not isinstance(self.event, events.LineLogged):
            return self.chunk
        return b"".join(self.frames[index + 1 :])


class EndLast:
    """A job's events in stream order, but its end last.

    A runner cut off from NATS publishes the lines its tool printed meanwhile once it can, and
    by then another runner may have ended the job (RUNNER_LOST): those lines are stored after
    the job's end. A viewer's stream ends with the end, so they are handed on before it: the
    end is held back while the stream has more of the job's events (``pending``, as the
    consumer counts them). A second end (the lost runner's own) is not handed on: the first
    one stands, as in the read models. The usual end, the job's last event, goes out at once.
    """

    __slots__ = ("ended", "held")

    def __init__(self) -> None:
        self.held: Item | None = None
        self.ended = False  # the end went out

    def order(self, item: Item | None, pending: int) -> list[Item]:
        """What to hand on now for one event of the stream (``item`` None: not one to show)."""
        ready = []
        if item is not None:
            if not item.terminal:
                ready.append(item)
            elif self.held is None:
                self.held = item
        if self.held is not None and pending == 0 and not self.ended:
            ready.append(self.held)
            self.ended = True
        return ready


def decode_event(data: bytes, job_id: str) -> events.AnyEvent | None:
    """The event of job ``job_id`` in a message of its subjects; None for one that does not
    decode, or names another job (not written by jobrunner: another job's ending there must
    not end this job's stream)."""
    try:
        event = codec.decode(data)
    except msgspec.MsgspecError:
        return None
    return event if getattr(event, "job_id", None) == job_id else None


def decode_item(seq: int, data: bytes, job_id: str, build: FrameBuilder) -> Item | None:
    event = decode_event(data, job_id)
    if event is None:
        return None
    return Item(seq, event, build(event, seq, None))


class Batch:
    """Items handed over together; counted once in the process's total however many clients
    hold it (they share the bytes)."""

    __slots__ = ("holders", "items", "size", "terminal", "wire")

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.size = sum(len(item.chunk) for item in items)
        self.holders = 0
        self.terminal = any(item.terminal for item in items)
        # The items' bytes as the clients' connections are written them (``directwrite``),
        # made by the first client written to straight and shared by the others; dropped at
        # the hand-over's end, so a batch queued in inboxes is not held twice.
        self.wire: bytes | None = None


class Subscriber:
    """One client's inbox: batches appended by the feed, taken by the client a piece at a time
    (``TAKE_BYTES``)."""

    __slots__ = (
        "batches",
        "bytes",
        "direct",
        "fanout",
        "idle",
        "on_hold",
        "overflow",
        "room",
        "wakeup",
    )

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.batches: list[Batch] = []
        self.bytes = 0
        self.overflow = False  # cut: the client must reconnect and resume
        self.idle = False  # the job had no event for a keep-alive interval
        # Handed nothing (no batch, no keep-alive: its wake-up is set only by a cut): the client
        # waits for its history read's turn, and that read will go up to where the feed is when
        # the turn comes (``Fanout.history_turn``). A viewer in line would otherwise fill its
        # inbox meanwhile and be cut as soon as it read.
        self.on_hold = False
        self.wakeup = asyncio.Event()
        self.room: asyncio.Event | None = None  # the feed's: set when this client took or left
        # Set by the client's stream while it waits with nothing unsent: writes a batch to the
        # client at once, or declines (False, nothing written) and the batch is queued.
        self.direct: Callable[[Batch], bool] | None = None

    @property
    def has_items(self) -> bool:
        return bool(self.batches)

    def take(self, max_bytes: int | None = None) -> list[Item]:
        """The oldest batches, all of them or (``max_bytes``) whole batches up to about that
        many bytes, at least one; the rest stays in the inbox, counted in its backlog."""
        self.idle = False
        batches = self._release(max_bytes)
        if not self.batches:
            self.wakeup.clear()
        if self.room is not None:
            self.room.set()
        if len(batches) == 1:
            return batches[0].items
        return [item for batch in batches for item in batch.items]

    def cut(self) -> None:
        """Drop the backlog and end the client's stream (it resumes by ``Last-Event-ID``)."""
        self._release()
        self.overflow = True
        self.wakeup.set()
        if self.room is not None:
            self.room.set()

    def _release(self, max_bytes: int | None = None) -> list[Batch]:
        if max_bytes is None or self.bytes <= max_bytes:
            batches, self.batches, self.bytes = self.batches, [], 0
        else:
            count = size = 0
            for batch in self.batches:
                if count and size + batch.size > max_bytes:
                    break
                count += 1
                size += batch.size
            batches, self.batches = self.batches[:count], self.batches[count:]
            self.bytes -= size
        for batch in batches:
            batch.holders -= 1
            if batch.holders == 0:
                self.fanout.buffered_bytes -= batch.size
        return batches

    def keep_alive(self) -> None:
        self.idle = True
        self.wakeup.set()

    def reads_live(self) -> None:
        """From now on the client is handed what the feed reads (it joined at the feed, or its
        history read's turn came: ``on_hold`` ends), and a feed paused because its every other
        client is behind goes on, since this one has room. Not at a join that waits for a turn:
        that wake-up would restart the pause's timeout and keep a stuck client from its cut."""
        self.on_hold = False
        if self.room is not None:
            self.room.set()


class JobFeed:
    def __init__(self, fanout: Fanout, job_id: str, start_seq: int | None = None) -> None:
        self.fanout = fanout
        self.job_id = job_id
        self.start_seq = start_seq  # None: the stream's end when the feed starts
        # Every event of the job up to here has been handed to the subscribers of the moment, or
        # is queued or held for them (``_pending``, a piece waiting for room): a joiner reads up
        # to here from the history and drops what the feed then hands it twice, by sequence.
        self.last_seq = 0
        self.subscribers: set[Subscriber] = set()
        self.joining = 0  # clients waiting for the feed to be ready, not subscribers yet
        # What a stream request needs of the job's row and never changes (``first_seq``,
        # ``requested_by``), from the client that started the feed: its later clients, a
        # thousand viewers arriving, are answered without a read of the row each.
        self.row: dict[str, Any] | None = None
        self.ended = False
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        # Every item handed on since the feed's first sequence, in order, while it stays small;
        # None once it grew too large (for good: a record must never have a hole).
        self.record: list[Item] | None = []
        self.record_from = 0
        self.record_size = 0
        self._pending: list[Item] = []  # to be handed over at the next flush
        self._pending_bytes = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._handed_over_at = -math.inf  # loop time of the last hand-over
        self._end_last = EndLast()
        # Backpressure (``PAUSE_BYTES``): set by a client's take; ``stalled`` once a pause
        # outlasted ``Limits.history_idle``: no pause then until a client takes again, so that a
        # viewer that stopped reading is cut by its limit as before, not held on to forever.
        self.room = asyncio.Event()
        self.stalled = False
        # The quiet path (``QUIET_BYTES``): set while the feed's task waits for events; the loop
        # time of the last events handed on in the callback since the feed's task last woke (a
        # keep-alive is due only a full interval after them); how the callback ended the feed.
        self._waiting = False
        self._quiet_at: float | None = None
        self._finished = False
        self._callback_failure: Exception | None = None  # raised in the feed's task
        self.failure: Exception | None = None  # what ended the feed's task, if it failed

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"sse-feed-{self.job_id}")

    async def _run(self) -> None:
        fanout = self.fanout
        try:
            # Inside the try: a feed that cannot even subscribe (NATS away, an API timeout under
            # load) must still release its clients, or they would wait forever.
            # ``ended`` is the feed's stop, set before its cancel (``stop_if_unwatched``): a
            # cancel lost in a JetStream request here (3.11's wait_for, with the reply) left a
            # feed nobody watched holding a consumer and reading until its job ended.
            if self.start_seq is None:
                info = await fanout.js.stream_info(fanout.names.stream)
                self.last_seq = info.state.last_seq
            else:
                self.last_seq = self.start_seq - 1
            self.record_from = self.last_seq + 1
            async with AsyncExitStack() as stack:
                if self.ended:
                    return
                # At the consumer limit its joiners wait, silently (``Fanout.join``; README).
                reader = await fanout.open_reader(stack, self.job_id, self.last_seq + 1)
                reader.on_arrival = lambda: self._on_arrival(reader)
                self.ready.set()
                while not self.ended and not await self._deliver(await self._next(reader)):
                    pass
        except Exception as exc:
            self.failure = exc
            log.warning("sse feed failed", job_id=self.job_id, error=repr(exc))
            if self.subscribers:
                metrics.SSE_STREAMS_CUT.labels("feed_failed").inc(len(self.subscribers))
            for subscriber in list(self.subscribers):
                subscriber.cut()
        finally:
            self._flush()
            self.ended = True
            self.drop_record()
            self.ready.set()
            fanout.forget(self)

    async def _next(self, reader: OrderedReader) -> list[Msg]:
        """The next events for the feed's task: ``[]`` when a keep-alive is due, or when the
        callback ended the feed (it raises what failed there)."""
        keepalive = self.fanout.limits.keepalive
        loop = asyncio.get_running_loop()
        while True:
            quiet_at = self._quiet_at
            wait = keepalive if quiet_at is None else max(0.0, quiet_at + keepalive - loop.time())
            self._waiting = True
            try:
                msgs = await reader.next_batch(wait)
            finally:
                self._waiting = False
            if self._callback_failure is not None:
                raise self._callback_failure
            if msgs:
                self._quiet_at = None  # the keep-alive's interval starts again from these
                return msgs
            if self._finished:
                return msgs
            if self._quiet_at is None or loop.time() >= self._quiet_at + keepalive:
                self._quiet_at = None
                return []

    def _on_arrival(self, reader: OrderedReader) -> bool:
        """The quiet path: hand on a small arrival in the subscription's callback while the
        feed's task waits (nothing of the feed is under way then, so the order holds). False:
        the feed's task takes it (it is woken, also when the callback ended the feed)."""
        if (
            not self._waiting
            or reader.buffered_bytes > QUIET_BYTES
            or self._behind(QUIET_FRAMES_BYTES)
        ):
            return False
        self._quiet_at = asyncio.get_running_loop().time()
        try:
            for msg in reader.take():
                seq, pending = position(msg)
                self._queue(
                    self._order(
                        seq, pending, decode_item(seq, msg.data, self.job_id, self.fanout.build)
                    )
                )
                if self._end_last.ended:
                    self._flush()
                    self._finished = True
                    return False
            self._hand_over_soon()
        except Exception as exc:  # the feed's task fails with it, as if it had been its own
            self._callback_failure = exc
            return False
        return True

    async def _deliver(self, msgs: list[Msg]) -> bool:
        """Hand ``msgs`` on; True once the job's terminal status went out."""
        if self._finished:
            return True
        if not msgs:
            # One timer for the job, not one per client (none for a client on hold: it sends
            # its own while it waits, and one from here would follow its history).
            for subscriber in self.subscribers:
                if not subscriber.on_hold:
                    subscriber.keep_alive()
            return False
        # A piece is handed over once a client has room for it whole (``_room``): until then
        # it is held here, not in ``_pending``, which the batching window's timer flushes.
        piece: list[Item] = []
        size = 0
        loop = asyncio.get_running_loop()
        turn_ends = loop.time() + TURN_SECONDS
        for msg in msgs:
            if size >= HAND_OVER_BYTES or loop.time() >= turn_ends:
                await self._room_for(size)
                self._queue(piece)
                self._flush()
                piece, size = [], 0
                await asyncio.sleep(0)
                turn_ends = loop.time() + TURN_SECONDS
            seq, pending = position(msg)
            item = await self._decode_in_steps(seq, msg.data)
            for ready in self._order(seq, pending, item):
                piece.append(ready)
                size += len(ready.chunk)
            if self._end_last.ended:
                await self._room_for(size)
                self._queue(piece)
                self._flush()
                return True
        await self._room_for(size)
        self._queue(piece)
        self._hand_over_soon()
        return False

    async def _decode_in_steps(self, seq: int, data: bytes) -> Item | None:
        """``decode_item``, with a large LineLogged framed ``FRAME_LINES`` lines per step."""
        frame_lines = self.fanout.frame_lines
        event = decode_event(data, self.job_id)
        if event is None:
            return None
        if (
            frame_lines is None
            or not isinstance(event, events.LineLogged)
            or len(event.lines) <= FRAME_LINES
        ):
            return Item(seq, event, self.fanout.build(event, seq, None))
        frames = frame_lines(event, seq, 0, FRAME_LINES)
        for first in range(FRAME_LINES, len(event.lines), FRAME_LINES):
            await asyncio.sleep(0)
            frames += frame_lines(event, seq, first, first + FRAME_LINES)
        return Item(seq, event, frames)

    def _order(self, seq: int, pending: int, item: Item | None) -> list[Item]:
        """What is ready to hand on of the ``item`` of the message at ``seq`` (``EndLast``,
        with the messages ``pending`` after it), in the record already."""
        self.last_seq = seq
        ready = self._end_last.order(item, pending)
        for each in ready:
            if each.seq < seq:
                # An end handed on after later events: the record, kept in stream order
                # for look-ups by sequence, is dropped; late viewers read the history.
                self.drop_record()
            self._remember(each)
        return ready

    def _queue(self, items: list[Item]) -> None:
        self._pending += items
        self._pending_bytes += sum(len(item.chunk) for item in items)

    def _hand_over_soon(self) -> None:
        """Hand over what is queued at most once per batching window, at the window's leading
        edge: at once when the last hand-over is a window old, else when it will be. The writes
        per second are the same as holding every first event a whole window, without the wait
        (messages a window apart, as a busy runner paces them, each went out a window late)."""
        if self._flush_timer is not None:
            return
        window = self.fanout.coalesce_window()
        loop = asyncio.get_running_loop()
        wait = self._handed_over_at + window - loop.time()
        if window < 0.001 or wait <= 0:
            self._flush()
        else:
            self._flush_timer = loop.call_later(wait, self._flush)

    def _behind(self, coming: int) -> bool:
        """Is every client of the feed behind: cut, at least ``PAUSE_BYTES`` behind, or without
        room under its limit for ``coming`` bytes besides those waiting to be handed over
        (``_pending``)? A client in line for a history read (``on_hold``) is handed nothing and
        does not count: a feed whose every client waits so is behind too (it reads for nobody).
        """
        limits = self.fanout.limits
        pause = min(PAUSE_BYTES, limits.client_bytes // 2)
        # An empty inbox has room for anything: a piece over a client's limit cuts it however
        # long the feed waits.
        fits = max(0, limits.client_bytes - self._pending_bytes - coming)
        for s in self.subscribers:
            if not (s.on_hold or s.overflow) and s.bytes < pause and s.bytes <= fits:
                return False  # (at the first: a feed may have a thousand clients)
        return bool(self.subscribers)

    async def _room_for(self, coming: int) -> None:
        """``_room`` for a piece of ``coming`` bytes. What the batching window holds
        (``_pending``) goes first when the two would not fit an inbox together: an empty inbox has
        room for anything, and the window's batch and the piece handed over as one would cut a
        client that reads."""
        if self._pending and self._pending_bytes + coming > self.fanout.limits.client_bytes:
            self._flush()
        await self._room(coming)

    async def _room(self, coming: int) -> None:
        """Wait while every client is behind (``_behind``, for ``coming`` bytes more): the feed
        then reads only as fast as its fastest client takes, instead of buffering the flood
        until the client is cut, and a client that reads is handed no more than its limit."""
        if self.stalled:
            if not self.room.is_set():
                return
            self.stalled = False
        while self._behind(coming):
            self.room.clear()
            if all(s.on_hold or s.overflow for s in self.subscribers):
                # Nobody reads (a cut client only waits to leave), so nobody is there to cut
                # either: until a turn comes or a client joins at the feed
                # (``Subscriber.reads_live``), or one leaves.
                await self.room.wait()
                continue
            try:
                async with asyncio.timeout(self.fanout.limits.history_idle):
                    await self.room.wait()
            except TimeoutError:
                self.stalled = True
                return

    def _remember(self, item: Item) -> None:
        if self.record is None:
            return
        fanout = self.fanout
        size = len(item.chunk)
        if (
            self.record_size + size > fanout.limits.record_bytes
            or fanout.recorded_bytes + size > fanout.limits.total_bytes // 16
        ):
            self.drop_record()
            return
        self.record.append(item)
        self.record_size += size
        fanout.recorded_bytes += size

    def drop_record(self) -> None:
        if self.record is not None:
            self.fanout.recorded_bytes -= self.record_size
            self.record = None
            self.record_size = 0

    def recorded_since(self, start_seq: int) -> list[Item] | None:
        """Every decodable event from ``start_seq`` up to the feed's position, from memory; None
        when the record does not reach back that far (the client reads its history instead).

        Call it in the same step as ``Fanout.join``: the record then ends where the inbox
        begins."""
        if self.record is None or start_seq < self.record_from:
            return None
        return self.record[bisect_left(self.record, start_seq, key=lambda item: item.seq) :]

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._pending:
            return
        batch = Batch(self._pending)
        self._pending, self._pending_bytes = [], 0
        self._handed_over_at = asyncio.get_running_loop().time()
        self.fanout.hand_over(self.subscribers, batch)

    def leave(self, subscriber: Subscriber) -> None:
        subscriber.cut()  # (sets ``room``: a feed paused for this client goes on)
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            self.fanout.clients -= 1
        self.stop_if_unwatched()

    def stop_if_unwatched(self) -> None:
        """End the feed when no client follows it or waits to: the last one left, or the only
        ones gave up while it started (their requests went away mid-join)."""
        if not self.subscribers and not self.joining and not self.ended and self.task is not None:
            self.ended = True
            self.drop_record()
            self.fanout.forget(self)
            self.task.cancel()


class HistoryStalled(Exception):
    """A history read got nothing for ``history_idle`` seconds with events still to come, or
    its turn was given back because its client left an item untaken that long (``HistoryTurn``):
    either way the read ends before its end, and its client resumes."""


class HistoryTurn:
    """A history read's place among the ``history_reads``: waited for in line (``taken``),
    given back (once) when the read ends, or earlier when its client leaves an item untaken for
    ``idle`` seconds: a viewer that does not read must not keep the next ones waiting. One timer
    a read, set again at most once per ``idle``, rather than one an item."""

    def __init__(self, places: asyncio.Semaphore, idle: float) -> None:
        self._places = places
        self._idle = idle
        self._loop = asyncio.get_running_loop()
        self.held = False
        # The place asked for, once: the read keeps its place in line however often its
        # caller stops waiting to send a keep-alive.
        self._asking: asyncio.Task[bool] | None = None
        self._left = False  # given back, or left the line
        self._waiting_since: float | None = None  # an item handed on, not yet taken
        self._timer: asyncio.TimerHandle | None = None
        # What else goes with the turn: the read's consumer, which counts against the stream.
        self.on_given_back: Callable[[], None] | None = None

    async def taken(self, wait: float | None = None, wake: asyncio.Event | None = None) -> bool:
        """Wait for the place, at most ``wait`` seconds (None: as long as it takes) or until
        ``wake`` is set; True once the read holds it. False for good once given back: a read
        takes one turn."""
        if self._left:
            return False
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._places.acquire())
        if not self._asking.done():
            woken = asyncio.ensure_future(wake.wait()) if wake is not None else None
            try:
                await asyncio.wait(
                    [self._asking] if woken is None else [self._asking, woken],
                    timeout=wait,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                if woken is not None:
                    woken.cancel()
        # Also a place that came while the caller was away (writing its keep-alive).
        self.held = self._asking.done() and not self._left
        return self.held

    def client_waits(self) -> None:
        """An item is about to go to the client."""
        self._waiting_since = self._loop.time()
        if self._timer is None and self.held:
            self._timer = self._loop.call_later(self._idle, self._check)

    def client_took(self) -> None:
        self._waiting_since = None

    def _check(self) -> None:
        self._timer = None
        if self._waiting_since is None:
            return  # taken; the next item sets the timer again
        left = self._waiting_since + self._idle - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check)
        elif self.held:
            self.give_back()
            if self.on_given_back is not None:
                self.on_given_back()

    def give_back(self) -> None:
        """At the read's end, or at its client's idle limit (then ``on_given_back`` too); a
        read still in line leaves it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        asking = self._asking
        if self._left:
            return
        self._left = True
        if asking is None:
            return  # never in line
        if not asking.done():
            # (A place handed to it in this very step goes on to the next in line: asyncio's
            # Semaphore passes on what a cancelled waiter was given.)
            asking.cancel()
        elif not asking.cancelled():
            self.held = False
            self._places.release()


class Fanout:
    """The feeds of one API process, by job id, and what their clients hold in memory."""

    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        build: FrameBuilder,
        limits: Limits,
        connections: ReaderConnections | None = None,
        frame_lines: LineFramer | None = None,
    ) -> None:
        self.js = js
        # Where readers get their own connection (no noisy neighbour); None: all share ``js``.
        self.connections = connections
        self.names = names
        self.build = build
        # Frames a large LineLogged a slice at a time (``FRAME_LINES``); None: all at once.
        self.frame_lines = frame_lines
        self.limits = limits
        self.feeds: dict[str, JobFeed] = {}
        # Bytes of every batch some client still holds (each batch once), and the most so far.
        self.buffered_bytes = 0
        self.peak_buffered_bytes = 0
        self.recorded_bytes = 0  # the feeds' records together
        self.clients = 0  # subscribers of every feed
        self.clients_cut = 0
        self.direct_writes = 0  # batches written straight to a client's connection
        self.direct_enabled = True  # until a direct write fails (``_write_direct``)
        # Bounds the history reads' consumers on the stream (``stream_max_consumers``).
        self.history_reads = asyncio.Semaphore(limits.history_reads)
        self.consumer_limit_waits = 0  # reader attempts (history, feeds) refused at the limit
        # History reads whose client left an item untaken for ``history_idle`` (``HistoryTurn``).
        self.history_turns_given_back = 0
        # NATS has not answered the API's probe for its bound (``natswatch``): each client's
        # stream tells its viewer when this changes (SSE ``stale``).
        self.nats_silent = False
        # Set at each change of ``nats_silent``: one per all-jobs stream (``job_updates``), which
        # waits on its own reader, not on a feed's subscriber.
        self.silence_watchers: set[asyncio.Event] = set()

    def tell_nats_silence(self, silent: bool) -> None:
        """NATS went silent or answers again: every client waiting for events is woken to say
        so. Not one in line for a history read (``on_hold``): its wake-up means a cut there, and
        it says so at its next keep-alive."""
        self.nats_silent = silent
        for watcher in self.silence_watchers:
            watcher.set()
        for feed in self.feeds.values():
            for subscriber in feed.subscribers:
                if not subscriber.on_hold and not subscriber.overflow:
                    subscriber.wakeup.set()

    def known_row(self, job_id: str) -> dict[str, Any] | None:
        """``JobFeed.row`` of the job's running feed, if there is one."""
        feed = self.feeds.get(job_id)
        return None if feed is None or feed.ended else feed.row

    async def join(
        self, job_id: str, start_seq: int | None = None, row: Mapping[str, Any] | None = None
    ) -> tuple[JobFeed, Subscriber, int]:
        """Subscribe to the job's feed; returns it, the inbox, and the feed's position at the
        moment of joining: events up to it must come from history, later ones arrive in the inbox.

        A feed that does not run yet starts at ``start_seq`` when given (the caller checked that
        it lies in the stored past: a feed never waits ahead of the stream), else at the stream's
        end. Where a feed starts never changes what a client receives, only what it reads as
        history first. ``row``: the job's row as the caller read it (``JobFeed.row``).
        """
        feed = self.feeds.get(job_id)
        if feed is None or feed.ended:
            feed = JobFeed(self, job_id, start_seq)
            self.feeds[job_id] = feed
            feed.start()
        if feed.row is None and row is not None:
            feed.row = {"first_seq": row["first_seq"], "requested_by": row["requested_by"]}
        feed.joining += 1
        try:
            await feed.ready.wait()
        finally:
            feed.joining -= 1
            if not feed.ready.is_set():  # the client went away while the feed started
                feed.stop_if_unwatched()
        subscriber = Subscriber(self)
        if feed.ended:
            metrics.SSE_STREAMS_CUT.labels("feed_failed").inc()
            subscriber.cut()  # the feed could not start: the client retries
        else:
            feed.subscribers.add(subscriber)
            subscriber.room = feed.room
            self.clients += 1
        return feed, subscriber, feed.last_seq

    def coalesce_window(self) -> float:
        """How long a feed gathers events before handing them over: longer with more clients in
        the process, so that its writes per second stay about the same however many there are."""
        return min(COALESCE_MAX, COALESCE_PER_CLIENT * self.clients)

    def reader_js(self) -> AbstractAsyncContextManager[JetStreamContext]:
        """The JetStream context a reader of a job's stream subscribes with: on a connection
        of its own when the fanout has ``connections``, so that a flooding job's data never
        queues ahead of another job's on one socket."""
        if self.connections is None:
            return nullcontext(self.js)
        return self.connections.lease()

    def forget(self, feed: JobFeed) -> None:
        if self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]

    def hand_over(self, subscribers: set[Subscriber], batch: Batch) -> None:
        limit = self.limits.client_bytes
        # Small batches only: a larger one goes through the clients' tasks a take at a time.
        direct = self.direct_enabled and batch.size <= TAKE_BYTES
        queued = written = 0
        for subscriber in list(subscribers):
            if subscriber.overflow or subscriber.on_hold:
                continue
            # Straight to a waiting client's connection: no wake-up of its task (directwrite.py).
            # Not once its task is woken (a keep-alive, a cut): what it then sends comes first.
            write = subscriber.direct if direct else None
            if write is not None and not subscriber.wakeup.is_set():
                try:
                    if write(batch):
                        written += 1
                        continue
                except Exception as exc:
                    # Nothing was written (a writer raises before its one transport write, and
                    # the stream counts a batch sent only after it): the batch goes the
                    # framework's way, and so does every later one, rather than lines lost in
                    # the middle of a broadcast.
                    direct = self.direct_enabled = False
                    log.error(
                        "sse direct writes failed; streaming through the framework",
                        error=repr(exc),
                    )
            if subscriber.bytes + batch.size > limit:
                self._cut(subscriber, "client")
                continue
            if batch.holders == 0:
                self.buffered_bytes += batch.size
            batch.holders += 1
            subscriber.batches.append(batch)
            subscriber.bytes += batch.size
            subscriber.wakeup.set()
            queued += 1
        batch.wire = None
        self.direct_writes += written
        counts = metrics.SSE_HAND_OVERS
        counts.hand_overs += 1
        # Written straight or queued; a viewer cut here was not handed the batch.
        counts.client_deliveries += written + queued
        while self.buffered_bytes > self.limits.total_bytes:
            largest = self._largest_backlog()
            if largest is None:
                break
            self._cut(largest, "total")
        self.peak_buffered_bytes = max(self.peak_buffered_bytes, self.buffered_bytes)

    def _largest_backlog(self) -> Subscriber | None:
        return max(
            (s for feed in self.feeds.values() for s in feed.subscribers if s.batches),
            key=lambda s: s.bytes,
            default=None,
        )

    def _cut(self, subscriber: Subscriber, over: str) -> None:
        self.clients_cut += 1
        metrics.SSE_STREAMS_CUT.labels(f"{over}_backlog").inc()
        log.info("sse client cut", over=over, backlog_bytes=subscriber.bytes)
        subscriber.cut()

    async def history(
        self, job_id: str, start_seq: int, until_seq: int, turn: HistoryTurn | None = None
    ) -> AsyncGenerator[Item, None]:
        """The job's events from ``start_seq`` until at least ``until_seq`` (or the stream's end),
        from JetStream, for a client whose start lies before its feed's.

        Raises ``HistoryStalled`` rather than stop early: a missing event must never pass for
        the end of the history. At most ``history_reads`` run at once (the rest wait their
        turn; one whose client leaves an item untaken for ``history_idle`` gives its turn back
        and ends with ``HistoryStalled``), and one that finds the stream at its consumer limit
        tries again for up to ``history_idle`` seconds before it fails. ``turn``: the caller's,
        already ``taken`` (``history_turn``; the caller then gives it back), else the read waits
        for one here."""
        # The turn on a stack of its own: ``open_reader`` closes ``stack`` between attempts.
        async with AsyncExitStack() as own_turn, AsyncExitStack() as stack:
            if turn is None:
                turn = await own_turn.enter_async_context(self.history_turn())
                await turn.taken()
            reader = await self.open_reader(
                stack, job_id, start_seq, max_buffered_bytes=self.limits.client_bytes
            )
            turn.on_given_back = lambda: self._took_back(reader)
            if start_seq > until_seq or await reader.count() == 0:
                return
            loop = asyncio.get_running_loop()
            end_last = EndLast()
            while True:
                msgs = await reader.next_batch(self.limits.history_idle)
                if not msgs:
                    raise HistoryStalled(job_id)
                turn_ends = loop.time() + TURN_SECONDS
                for msg in msgs:
                    if loop.time() >= turn_ends:
                        # A long history (a flood's viewer catching up) is read in turns too:
                        # the other jobs' feeds and clients go in between.
                        await asyncio.sleep(0)
                        turn_ends = loop.time() + TURN_SECONDS
                    seq, pending = position(msg)
                    for item in end_last.order(
                        decode_item(seq, msg.data, job_id, self.build), pending
                    ):
                        turn.client_waits()
                        yield item
                        turn.client_took()
                        if not turn.held:
                            # Its client took longer than history_idle: the turn went to the
                            # next read; this one ends and its client resumes.
                            raise HistoryStalled(job_id)
                    holding_end = end_last.held is not None and not end_last.ended
                    if pending == 0 or (seq >= until_seq and not holding_end):
                        return

    def _took_back(self, reader: OrderedReader) -> None:
        """A read's turn taken back from a client that does not read: its consumer goes now,
        not when the client comes back."""
        self.history_turns_given_back += 1
        reader.close_soon(self.names.stream)

    @asynccontextmanager
    async def history_turn(self) -> AsyncIterator[HistoryTurn]:
        """A place in line for one of the ``history_reads``: wait for it with ``taken``, as
        long as it takes (the viewer gets keep-alives meanwhile, not an error); given back on
        leaving. The place is bounded instead: a read whose client leaves its next item untaken
        for ``history_idle`` seconds gives it back (``HistoryTurn``)."""
        turn = HistoryTurn(self.history_reads, self.limits.history_idle)
        try:
            yield turn
        finally:
            turn.give_back()

    async def open_reader(
        self,
        stack: AsyncExitStack,
        job_id: str,
        start_seq: int,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> OrderedReader:
        """A consumer of the job's events from ``start_seq`` (a history read's, a feed's),
        entered on ``stack``. While the stream holds its limit of consumers (every viewer, feed
        and service counts), try again after a short wait rather than end the viewers' streams,
        which would come back as reconnects into the same crowd: for up to ``history_idle``
        seconds (``ConsumerLimitRetry``), then the refusal goes to the caller."""
        retry = ConsumerLimitRetry(self.limits.history_idle)
        opened = False
        try:
            while True:
                js = await stack.enter_async_context(self.reader_js())
                try:
                    reader = await stack.enter_async_context(
                        ordered_reader(
                            js,
                            self.names.stream,
                            self.names.job_subjects(job_id),
                            start_seq=start_seq,
                            max_buffered_bytes=max_buffered_bytes,
                        )
                    )
                except BadRequestError as exc:
                    refused = exc
                else:
                    opened = True
                    return reader
                await stack.aclose()  # the connection's lease back while this waits
                self.consumer_limit_waits += 1
                await retry.wait_turn(refused)
        finally:
            retry.release(opened)
