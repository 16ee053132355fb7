"""Publishes a job's lines in batches: whatever has accumulated is sent as soon as the previous
publish is acknowledged, so a lone line goes out at once and a flood goes out in large batches.

Publishing retries forever with the same event id (JetStream drops the duplicate), and the buffer is
bounded: when NATS is away the tool blocks on its own output instead of lines being lost.

Many jobs printing a line at a time are paced (``PublishPacing``): a job's next message waits for
the next tick of a clock shared by all jobs (ticking once per window), so lines gather in fewer
messages and the jobs' messages leave together; the window grows with the number of jobs
running, so a lone job (or a job whose lines are rare) still publishes each line the moment it
is read. The tool's pipe is read on the same ticks (``read_rest``): what such a job prints
between two ticks would wait for the next one anyway, and is read there in one go. A job with a
flood's worth waiting is paced on a faster clock (``FLOOD_PACE``): its messages are large
anyway, and it must not be held.

Every message fits: batches are sized in encoded bytes under the server's announced
``max_payload`` (read at each batch: a reconnect may reach a server with another limit), and
``check_line_fits`` refuses at start a ``max_line_bytes`` whose worst-case line could not fit.

A flood's large messages go on a connection of their own (``bulk``, when the runner has one): a
connection's messages are written, and read by nats-server, in order, so a quiet job's line
published just after a flood's message (up to half a megabyte) waited for all of it (the
noisy-neighbour row). It is a fast path only: a message it does not store in time goes on the
main connection (``bulk.BulkLane``). Order within a job holds across the two: each message is
stored (acknowledged) before the job's next one is published.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from itertools import repeat
from operator import add

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jobrunner.common import ackinbox, metrics
from jobrunner.common.settings import Settings, SettingsError
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.services.runner.bounds import bounded_progress
from jobrunner.services.runner.bulk import BulkLane
from jobrunner.services.runner.output import MIN_LINE_BYTES, SPLIT_MARKER, Progress, split_text

MAX_BUFFERED_LINES = 50_000
MAX_BUFFERED_BYTES = 16 * 1024 * 1024  # whichever comes first: memory stays bounded
MAX_BATCH_BYTES = 512 * 1024  # a batch's size when max_payload allows it (throughput, not limits)
PROGRESS_INTERVAL = 0.1  # seconds between ProgressReported events while output floods

# What a message carries besides its lines: the NATS header block with Nats-Msg-Id (about 60
# bytes) and LineLogged's own fields (type, job_id, event_id, occurred_at, version: under 250
# bytes for job ids of up to 64 characters); reserved generously, never measured per message.
MESSAGE_OVERHEAD = 1024
# A line besides its text: [seq,"stdout","WARNING","2026-01-01T00:00:00.000000Z",""] and a comma.
LINE_OVERHEAD = 80
# msgspec writes a control character as \u00XX: 6 bytes of JSON for 1 byte of text, the most
# any byte of UTF-8 can grow.
JSON_GROWTH = 6
SPLIT_MARKER_BYTES = len(SPLIT_MARKER.encode())

# The pacing clock ticks once per window: this many seconds per job running on the runner, up
# to the cap. The runner's messages per second then stay about the same however many jobs print
# (100 jobs at 200 lines/s made 20,000 messages/s, each a publish, an ack, a decode in every API
# and in the projector), and a job alone is never held back (0.5 ms is about a publish's round
# trip).
PACE_PER_JOB = 0.0005
PACE_MAX = 0.05  # seconds: what pacing can add to a line's delay at most
# A job with this much waiting to be published (a flood, not a line at a time) is paced on a
# clock FLOOD_PACE times as fast: its messages are large anyway, and holding a flood's messages
# longer made its neighbours' lines later (the noisy-neighbour row, session 10).
FLOOD_BYTES = 4096
FLOOD_PACE = 0.4
# A message this large goes on the bulk connection: a flood's (up to MAX_BATCH_BYTES), never a
# job's printing a line at a time (100 jobs at 200 lines/s gathered at most 220 lines, 22 KiB).
BULK_BYTES = 64 * 1024

_encoder = msgspec.json.Encoder()


class PublishPacing:
    """The jobs publishing on one runner, and the window of the clock that paces them."""

    def __init__(self, per_job: float = PACE_PER_JOB, cap: float = PACE_MAX) -> None:
        self.per_job = per_job
        self.cap = cap
        self.publishers = 0
        # The futures waiting for each tick (by its loop time in whole microseconds).
        self._ticks: dict[int, list[asyncio.Future[None]]] = {}

    def window(self, flooding: bool = False) -> float:
        window = min(self.cap, self.per_job * self.publishers)
        return window * FLOOD_PACE if flooding else window

    def until(self, when: float) -> asyncio.Future[None]:
        """A future of its own for the caller, resolved at loop time ``when`` (a tick of the
        clock): the jobs' pipes rest and their messages wait until the same ticks, and one
        timer for each tick serves all of them (a timer each was two timers a job a tick, each
        pushed on and popped off the loop's heap of timers)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        key = round(when * 1e6)
        waiting = self._ticks.get(key)
        if waiting is None:
            waiting = self._ticks[key] = []
            loop.call_at(when, self._ring, key)
        waiting.append(future)
        return future

    def _ring(self, key: int) -> None:
        for future in self._ticks.pop(key):
            _resolve(future)


def pacing_wait(now: float, last_publish: float, window: float) -> float:
    """Seconds to wait before a job's next message: none once its last one is ``window`` old
    (a line after a quiet spell goes out at once), else until the next tick of a clock that
    ticks every ``window`` seconds (at most ``window``).

    The ticks are the same for every job: the busy jobs' messages go out in the same turn of
    the loop, and the NATS client writes what a turn published with one socket write (a write
    to the server cost more CPU than everything else of a message put together)."""
    if window <= 0 or now >= last_publish + window:
        return 0.0
    tick = (math.floor(last_publish / window) + 1) * window
    return max(0.0, tick - now)


def read_rest(now: float, last_read: float, window: float) -> float:
    """Seconds a tool's pipe rests after a read at ``now``: until the clock's next tick when
    the read before was less than two windows ago (the tool prints often: what it prints
    meanwhile is read in one go at the tick, when its message leaves anyway; two, so that the
    reads at consecutive ticks stay paced however late each one's turn came), else none (a line
    after a quiet spell is read, and published, at once)."""
    if window <= 0 or now - last_read >= 2 * window:
        return 0.0
    return (math.floor(now / window) + 1) * window - now


def batch_budget(max_payload: int) -> int:
    """Encoded bytes of lines one LineLogged may carry under the server's ``max_payload``."""
    return max_payload - MESSAGE_OVERHEAD


def worst_line_bytes(max_line_bytes: int) -> int:
    """The most a line piece of ``max_line_bytes`` can take inside a LineLogged."""
    return JSON_GROWTH * max(MIN_LINE_BYTES, max_line_bytes) + SPLIT_MARKER_BYTES + LINE_OVERHEAD


def check_line_fits(max_line_bytes: int, max_payload: int) -> None:
    """Refuse (at start) a ``max_line_bytes`` whose line piece could exceed ``max_payload``."""
    if worst_line_bytes(max_line_bytes) <= batch_budget(max_payload):
        return
    largest = (batch_budget(max_payload) - SPLIT_MARKER_BYTES - LINE_OVERHEAD) // JSON_GROWTH
    raise SettingsError(
        f"max_line_bytes = {max_line_bytes} cannot fit in one message: the NATS server's "
        f"max_payload is {max_payload} bytes and a line piece can take {JSON_GROWTH} bytes per "
        f"byte once encoded (control characters); set max_line_bytes to at most {largest} or "
        "raise the server's max_payload"
    )


def line_size(line: events.LogLine) -> int:
    """A line's encoded size inside a LineLogged, its comma included."""
    return len(_encoder.encode(line)) + 1


def next_batch(sizes: Sequence[int], limit: int, batch_max: int) -> tuple[int, int]:
    """How many of the lines (by their ``line_size``) go in the next message, and their size:
    at most ``batch_max`` lines and ``limit`` bytes, and always at least one line."""
    head = sum(sizes[:batch_max])
    if head <= limit:  # the usual case while lines flood: no loop over them
        return min(batch_max, len(sizes)), head
    size = 0
    count = 0
    for each in sizes:
        if count and (count >= batch_max or size + each > limit):
            break
        size += each
        count += 1
    return count, size


class LinePublisher:
    def __init__(
        self,
        nc: NATS,
        names: Names,
        job_id: str,
        batch_max: int = 1000,
        max_line_bytes: int = 65536,
        pacing: PublishPacing | None = None,
        bulk: BulkLane | None = None,
    ) -> None:
        self._nc = nc
        self._acks = ackinbox.of(nc)
        self._bulk = bulk
        self._names = names
        self._job_id = job_id
        self._batch_max = batch_max
        # Lines from other sources than a tool's pipes (an internal job's ctx.log) are split to
        # this too.
        self.max_line_bytes = max(MIN_LINE_BYTES, max_line_bytes)
        self._lines: list[events.LogLine] = []
        self._sizes: list[int] = []  # each buffered line's encoded size, comma included
        self._progress: Progress | None = None
        self._progress_sent: Progress | None = None
        self._progress_at = 0.0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        # How long ``room`` kept its callers waiting, in wall time: the periods that ended, how
        # many callers wait now (the stdout and stderr readers may wait at once) and when the
        # period under way began, as the first of them began to wait (time.monotonic). The drain
        # after a tool's exit does not count that time against its bound (executor).
        self._room_waited = 0.0
        self._room_waiters = 0
        self._room_wait_began = 0.0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._pacing = pacing
        self._pausing: asyncio.Future[None] | None = None
        # The message published and not yet known stored (its ack's future, the event, its
        # size) and its lines, the buffer's first ones: at most one a job.
        self._in_flight: tuple[asyncio.Future[Msg], events.LineLogged, int] | None = None
        self._in_flight_lines = 0
        self.messages = 0  # LineLogged messages published
        # A LineLogged's event id: random per publisher (76 random bits: a uuid4's first 20 hex
        # digits hold its fixed version digit), then its message number: unique for any
        # practical number of publishers, and no system call for randomness a message.
        self._id_base = uuid.uuid4().hex[:20]
        self.seq = 0
        self._buffered_bytes = 0
        self.published_lines = 0

    @classmethod
    def for_job(
        cls,
        nc: NATS,
        names: Names,
        job_id: str,
        settings: Settings,
        pacing: PublishPacing | None = None,
        bulk: BulkLane | None = None,
    ) -> LinePublisher:
        return cls(
            nc, names, job_id, settings.line_batch_max, settings.max_line_bytes, pacing, bulk
        )

    def start(self) -> None:
        if self._pacing is not None:
            self._pacing.publishers += 1
        self._task = asyncio.create_task(self._run(), name=f"publisher-{self._job_id}")

    def read_rest(self, now: float, last_read: float) -> float:
        """How long the job's tool pipe rests after a read (``read_rest``; none unpaced)."""
        if self._pacing is None:
            return 0.0
        return read_rest(now, last_read, self._pacing.window(self._flooding()))

    def rest(self, now: float, last_read: float) -> asyncio.Future[None] | None:
        """What the job's tool pipe waits for after a read at ``now``: the clock's tick when
        it rests (``read_rest``), else nothing. (An unpolled pipe is read as its rest ends, in
        the tick's turn of the loop, before the message leaving on the tick is made.)"""
        if self._pacing is None or not (seconds := self.read_rest(now, last_read)):
            return None
        return self._pacing.until(now + seconds)

    def add(self, stream: str, level: str, text: str, at: datetime) -> None:
        """Buffer a line (plain call: the per-line path stays free of awaits)."""
        self.seq += 1
        line = events.LogLine(self.seq, stream, level, at, text)
        size = line_size(line)
        budget = self._budget()
        if size <= budget:
            self._append(line, size)
            return
        # Longer than a message can hold (a mask longer than what it hides, or a server with a
        # smaller max_payload than the one checked at start): cut, not lost.
        self.seq -= 1
        room = max(MIN_LINE_BYTES, (budget - LINE_OVERHEAD) // JSON_GROWTH - SPLIT_MARKER_BYTES)
        for piece in split_text(text, room):
            self.seq += 1
            line = events.LogLine(self.seq, stream, level, at, piece)
            self._append(line, line_size(line))

    def add_lines(
        self, stream: str, levels: list[str], texts: list[str], at: datetime, block: str
    ) -> None:
        """Buffer a chunk's lines at once (``block``: the texts joined by line breaks). Each
        line's encoded size comes from its text's length where no character needs escaping
        (then JSON holds the text as it is), with no encoding per line."""
        seq = self.seq
        self.seq += len(texts)
        lines = list(
            map(
                events.LogLine,
                range(seq + 1, self.seq + 1),
                repeat(stream),
                levels,
                repeat(at),
                texts,
            )
        )
        data = block.encode()
        if len(_encoder.encode(block)) != len(data) + 2 + len(texts) - 1:
            # Some character is written as an escape (the line breaks joining the block are
            # its only expected ones): each line is measured.
            sizes = [line_size(line) for line in lines]
        else:
            # JSON holds each text as it is: a line's encoded size is that of the line without
            # its text (with the largest sequence number's digits for all: a byte too many at
            # most, never too few) plus its text's bytes.
            heads = {
                level: line_size(events.LogLine(self.seq, stream, level, at, ""))
                for level in set(levels)
            }
            # (map, not a loop: no Python code runs per line)
            lengths = map(len, texts if len(data) == len(block) else map(str.encode, texts))
            sizes = list(map(add, map(heads.__getitem__, levels), lengths))
        if max(sizes) > self._budget():
            self.seq = seq
            for level, text in zip(levels, texts, strict=True):
                self.add(stream, level, text, at)
            return
        self._lines += lines
        self._sizes += sizes
        self._buffered_bytes += sum(sizes)
        self._wakeup.set()

    def _append(self, line: events.LogLine, size: int) -> None:
        self._lines.append(line)
        self._sizes.append(size)
        self._buffered_bytes += size
        self._wakeup.set()

    async def room(self) -> None:
        """Wait while the buffer is full: the tool then blocks on its own output."""
        if self._full():
            self._room.clear()
            if self._room_waiters == 0:
                self._room_wait_began = time.monotonic()
            self._room_waiters += 1
            try:
                await self._room.wait()
            finally:
                self._room_waiters -= 1
                if self._room_waiters == 0:
                    self._room_waited += time.monotonic() - self._room_wait_began

    @property
    def waiting_for_room(self) -> bool:
        """Whether any caller of ``room`` waits now."""
        return self._room_waiters > 0

    def room_waited(self) -> float:
        """Seconds during which some caller of ``room`` waited, in all (the wait under way too);
        two callers waiting at once count once."""
        if self._room_waiters == 0:
            return self._room_waited
        return self._room_waited + time.monotonic() - self._room_wait_began

    async def room_came(self) -> None:
        """Return once the buffer has room (at once if it has)."""
        await self._room.wait()

    def _flooding(self) -> bool:
        return self._buffered_bytes >= FLOOD_BYTES

    def _full(self) -> bool:
        return len(self._lines) >= MAX_BUFFERED_LINES or self._buffered_bytes >= MAX_BUFFERED_BYTES

    def report_progress(self, progress: Progress) -> None:
        self._progress = bounded_progress(progress)
        self._wakeup.set()

    async def close(self) -> None:
        """Publish everything still buffered and stop."""
        self._closing = True
        self._wakeup.set()
        if self._pausing is not None:
            _resolve(self._pausing)
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        try:
            await self._publish_until_closed()
        finally:
            if self._pacing is not None:
                self._pacing.publishers -= 1
            if self._in_flight is not None:
                # Cancelled with an ack awaited: its timeout (or its loss with the connection,
                # already set) has nobody to tell.
                future = self._in_flight[0]
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: asyncio would log it as never retrieved
                future.cancel()

    async def _publish_until_closed(self) -> None:
        loop = asyncio.get_running_loop()
        last_publish = -math.inf
        while True:
            if self._in_flight is not None and not self._wakeup.is_set():
                # Nothing new to send meanwhile: take the ack now (the tool may wait for room).
                await self._settle()
            await self._wakeup.wait()
            self._wakeup.clear()
            while len(self._lines) > self._in_flight_lines:
                if self._pacing is not None and not self._closing:
                    window = self._pacing.window(self._flooding())
                    now = loop.time()
                    wait = pacing_wait(now, last_publish, window)
                    if wait > 0:
                        await self._pause(now + wait)  # the job's next lines join this message
                # Each message is stored before the job's next one is published (its order).
                await self._settle()
                last_publish = loop.time()
                count, size = self._next_batch()
                batch = self._lines[:count]
                event_id = f"{self._id_base}{self.messages:012x}"
                event = events.LineLogged(job_id=self._job_id, event_id=event_id, lines=batch)
                if size >= BULK_BYTES:
                    await self._publish(event, bulk=True)
                    self._stored(count, size)
                else:
                    await self._send(event, count, size)
            progress = self._progress
            if progress is not None and progress != self._progress_sent:
                now = loop.time()
                if self._closing or now - self._progress_at >= PROGRESS_INTERVAL:
                    self._progress_sent, self._progress_at = progress, now
                    await self._settle()  # after the lines printed before it, as they were
                    await self._publish(
                        events.ProgressReported(
                            job_id=self._job_id,
                            current=progress.current,
                            total=progress.total,
                            percent=progress.percent,
                            phase=progress.phase,
                            message=progress.message,
                        )
                    )
                else:
                    loop.call_later(PROGRESS_INTERVAL, self._wakeup.set)
            if self._closing:
                await self._settle()
                if not self._lines:
                    return

    async def _send(self, event: events.LineLogged, count: int, size: int) -> None:
        """Publish a message of the job's first ``count`` lines without waiting for its ack:
        the task waits for the clock's next tick anyway, and takes the ack then (``_settle``),
        one wake-up a message instead of two (the ack's was a resumption of the whole chain of
        awaits down to the inbox's future)."""
        try:
            future = await self._acks.publish_soon(
                self._names.subject(event), codec.encode(event), event.event_id
            )
        except Exception:
            # Not sent (NATS away, say): the retrying path sends it, with the same id.
            await self._publish(event)
            self._stored(count, size)
            return
        self._in_flight = (future, event, size)
        self._in_flight_lines = count

    async def _settle(self) -> None:
        """Wait until the message in flight, if any, is stored: its ack, or else the retrying
        path (the same event id: JetStream keeps one copy should the first try have been
        stored after all).

        An ack lost with the connection (a NATS restart) fails as soon as nats-py is connected
        again, not after the ack timeout (5 s of a silent job for its viewers): the inbox fails
        it then (``ackinbox.AckLostWithConnection``), and the copy sent again comes after the
        one nats-py held while away, so it is the one dropped. The job's next message still
        waits for this one to be stored: one message of a job in flight, in order."""
        if self._in_flight is None:
            return
        future, event, size = self._in_flight
        try:
            ackinbox.read_ack(await future)
        except Exception:
            # No ack in time, the connection lost it, or a refusal (which the retrying path
            # tells apart and reports).
            await self._publish(event)
        count = self._in_flight_lines
        self._in_flight = None
        self._in_flight_lines = 0
        self._stored(count, size)

    def _stored(self, count: int, size: int) -> None:
        """The job's first ``count`` lines (``size`` bytes) are stored: out of the buffer."""
        del self._lines[:count]
        del self._sizes[:count]
        self.published_lines += count
        self.messages += 1
        metrics.lines_published(count)
        self._buffered_bytes -= size
        if not self._full():
            self._room.set()

    async def _pause(self, until: float) -> None:
        """Wait until the clock's tick at loop time ``until``, or until ``close`` asks for the
        rest at once (a job's end is not held back by pacing)."""
        assert self._pacing is not None
        self._pausing = self._pacing.until(until)
        try:
            await self._pausing
        finally:
            self._pausing = None

    def _budget(self) -> int:
        # Either connection may carry a batch; after a reconnect they may reach servers of a
        # cluster with different limits.
        bulk = self._nc.max_payload if self._bulk is None else self._bulk.nc.max_payload
        return batch_budget(min(self._nc.max_payload, bulk))

    def _next_batch(self) -> tuple[int, int]:
        limit = min(MAX_BATCH_BYTES, self._budget())
        return next_batch(self._sizes, limit, self._batch_max)

    async def _publish(self, event: events.Publishable, bulk: bool = False) -> None:
        # Through the connection's ack inbox: the same message as eventstore.publish, for much
        # less CPU each (this is the runner's most frequent publish).
        lane = self._bulk
        if bulk and lane is not None and lane.usable():
            subject = self._names.subject(event)
            if await lane.publish(subject, codec.encode(event), event.event_id):
                return
            # Not stored in time: the same event (its id too) on the main connection.
        await self._acks.publish_until_stored(self._names, event)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
