"""One JetStream subscription per job per API process, broadcast to every SSE client of that job.

The first client of a job opens the job's feed: an ordered consumer from that client's start
sequence. Each event is decoded and turned into SSE frames once, then handed to every client of the
feed. A client that joins later and needs older events (a late joiner, or a ``Last-Event-ID`` from
before the feed's position) first reads those from JetStream with its own short-lived ordered
consumer, then continues with the feed, skipping what it already sent: gap-free and duplicate-free.

A client that falls far behind is disconnected rather than buffered without bound; its browser
reconnects with ``Last-Event-ID`` and resumes exactly where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import msgspec
import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api

from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names

log = structlog.get_logger()

# Events a client may lag behind its feed before it is disconnected (it then resumes).
MAX_PENDING_EVENTS = 20_000
# How long a late joiner waits for a history message before deciding there is none.
HISTORY_IDLE_SECONDS = 2.0
# With many clients on one job, events are handed over in batches, at most this often per
# client: one write per client per batch instead of one per event keeps the cost per event flat
# (the CPU of a write, not of an event, is what a broadcast to hundreds of sockets spends).
COALESCE_PER_CLIENT = 0.0002  # seconds of batching window per connected client ...
COALESCE_MAX = 0.1  # ... up to this (a lone client gets every event at once)

FrameBuilder = Callable[[events.AnyEvent, int, int | None], list[bytes]]


class Item:
    """One event of a job's stream, with its frames encoded once for every client."""

    __slots__ = ("chunk", "event", "frames", "seq", "terminal")

    def __init__(self, seq: int, event: events.AnyEvent, frames: list[bytes]) -> None:
        self.seq = seq
        self.event = event
        self.frames = frames
        self.chunk = b"".join(frames)
        self.terminal = isinstance(event, events.StatusChanged) and event.status.is_terminal

    def chunk_after_line(self, index: int | None) -> bytes:
        """The frames, without the lines up to ``index`` (a resume inside a batch)."""
        if index is None or not isinstance(self.event, events.LineLogged):
            return self.chunk
        return b"".join(self.frames[index + 1 :])


def decode_item(seq: int, data: bytes, build: FrameBuilder) -> Item | None:
    try:
        event = codec.decode(data)
    except msgspec.MsgspecError:
        return None
    if event is None:
        return None
    return Item(seq, event, build(event, seq, None))


class Subscriber:
    """One client's inbox: items appended by the feed, taken all at once by the client."""

    __slots__ = ("idle", "items", "overflow", "wakeup")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.overflow = False
        self.idle = False  # the job had no event for a keep-alive interval
        self.wakeup = asyncio.Event()

    def push(self, items: list[Item]) -> None:
        if len(self.items) >= MAX_PENDING_EVENTS:
            self.overflow = True
        else:
            self.items.extend(items)
        self.wakeup.set()

    def take(self) -> list[Item]:
        self.wakeup.clear()
        self.idle = False
        items, self.items = self.items, []
        return items

    def keep_alive(self) -> None:
        self.idle = True
        self.wakeup.set()


class JobFeed:
    def __init__(
        self, fanout: Fanout, js: JetStreamContext, names: Names, job_id: str, start_seq: int
    ) -> None:
        self.fanout = fanout
        self.js = js
        self.names = names
        self.job_id = job_id
        self.start_seq = start_seq
        # Every event of the job up to here has been handed to the subscribers of the moment.
        self.last_seq = start_seq - 1
        self.subscribers: set[Subscriber] = set()
        self.ended = False
        self.task: asyncio.Task[None] | None = None
        self._pending: list[Item] = []
        self._flush_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"sse-feed-{self.job_id}")

    async def _run(self) -> None:
        sub = None
        try:
            # Inside the try: a feed that cannot even subscribe (NATS away, an API timeout under
            # load) must still release its clients, or they would wait forever.
            sub = await self.js.subscribe(
                self.names.job_subjects(self.job_id),
                stream=self.names.stream,
                ordered_consumer=True,
                config=api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=self.start_seq,
                ),
                pending_msgs_limit=100_000,
            )
            while True:
                try:
                    msg = await sub.next_msg(timeout=self.fanout.keepalive)
                except (NatsTimeoutError, TimeoutError):
                    # One timer for the job, not one per client.
                    for subscriber in self.subscribers:
                        subscriber.keep_alive()
                    continue
                seq = msg.metadata.sequence.stream
                item = decode_item(seq, msg.data, self.fanout.build)
                self.last_seq = seq
                if item is None:
                    continue
                self._pending.append(item)
                window = min(COALESCE_MAX, COALESCE_PER_CLIENT * len(self.subscribers))
                if item.terminal or window < 0.001:
                    self._flush()
                elif self._flush_timer is None:
                    self._flush_timer = asyncio.get_running_loop().call_later(window, self._flush)
                if item.terminal:
                    break
        except Exception as exc:
            log.warning("sse feed failed", job_id=self.job_id, error=repr(exc))
            for subscriber in self.subscribers:
                subscriber.overflow = True  # its client reconnects and resumes
                subscriber.wakeup.set()
        finally:
            self._flush()
            self.ended = True
            self.fanout.forget(self)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(sub.unsubscribe())

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._pending:
            return
        items, self._pending = self._pending, []
        for subscriber in self.subscribers:
            subscriber.push(items)

    def leave(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        if not self.subscribers and not self.ended and self.task is not None:
            self.ended = True
            self.fanout.forget(self)
            self.task.cancel()


class Fanout:
    """The feeds of one API process, by job id."""

    def __init__(
        self, js: JetStreamContext, names: Names, build: FrameBuilder, keepalive: float
    ) -> None:
        self.js = js
        self.names = names
        self.build = build
        self.keepalive = keepalive
        self.feeds: dict[str, JobFeed] = {}

    def join(self, job_id: str, start_seq: int) -> tuple[JobFeed, Subscriber, int]:
        """Subscribe to the job's feed; returns it, the inbox, and the feed's position at the
        moment of joining: events up to it must come from history, later ones arrive in the inbox.
        """
        feed = self.feeds.get(job_id)
        if feed is None or feed.ended:
            feed = JobFeed(self, self.js, self.names, job_id, start_seq)
            self.feeds[job_id] = feed
            feed.start()
        subscriber = Subscriber()
        feed.subscribers.add(subscriber)
        return feed, subscriber, feed.last_seq

    def forget(self, feed: JobFeed) -> None:
        if self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]

    async def history(self, job_id: str, start_seq: int, until_seq: int) -> AsyncIterator[Item]:
        """The job's events from ``start_seq`` until at least ``until_seq`` (or the stream's end),
        from JetStream, for a client that joined a feed already past its start."""
        sub = await self.js.subscribe(
            self.names.job_subjects(job_id),
            stream=self.names.stream,
            ordered_consumer=True,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start_seq,
            ),
            pending_msgs_limit=100_000,
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=HISTORY_IDLE_SECONDS)
                except (NatsTimeoutError, TimeoutError):
                    return
                meta = msg.metadata
                item = decode_item(meta.sequence.stream, msg.data, self.build)
                if item is not None:
                    yield item
                if meta.sequence.stream >= until_seq or meta.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(sub.unsubscribe())
