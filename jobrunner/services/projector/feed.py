"""The event stream from a sequence on, decoded and projected, for the projector and replay."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobrunner.common import retry, stopping
from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.settings import Settings
from jobrunner.common.streamreader import StreamReader, StreamReaderError
from jobrunner.contracts import codec
from jobrunner.contracts.codec import decode_known
from jobrunner.contracts.events import UNSENT_UTC, AnyEvent
from jobrunner.contracts.names import Names
from jobrunner.services.projector.nulfree import JSON_NUL, NulFreeEvent
from jobrunner.services.projector.nulfree import decode as decode_nul_free
from jobrunner.services.projector.projections import Change, Unreadable, project
from jobrunner.services.projector.setaside import StoredMessage

log = structlog.get_logger()

FETCH_EVENTS = 10_000  # events per batch (one transaction), at most
# Socket reads per batch, at most: each holds up to 1 MiB of events, so a batch of big line
# events stays near 8 MiB (several times that decoded) instead of 10,000 of them.
FETCH_READS = 8
QUEUED_BATCHES = 8  # socket reads decoded ahead of Postgres
RECONNECTED_POLL_SECONDS = 0.05  # how often a feed waiting for nats-py's reconnect looks
# A close: the consumer's delete is a JetStream request (5 s timeout), and a second for the
# socket to take what it still holds. Past this the socket is dropped.
CLOSE_SECONDS = 6.0
BACKSLASH = ord("\\")  # the byte that starts every JSON escape, \u0000's too
NO_TIME = "MissingField: the event has no occurred_at (its time would be when it is read)"


class EventFeed:
    """The stream from a sequence on, decoded and projected, in batches.

    A task reads the stream (``StreamReader``: the raw protocol, several times faster than
    nats-py's fetch, and flow-controlled, so a slow database never gets the connection cut as a
    slow consumer) and projects each event while the caller waits on Postgres, up to
    ``QUEUED_BATCHES`` socket reads ahead. When a delivery goes missing or the connection drops,
    it starts again after the last event received: nothing skipped, nothing twice.

    A caller may ``hold`` the decoding after a fetch and ``resume`` it once Postgres has a long
    statement to work on (the lines' ``COPY``): reading a socket that has data buffered does not
    yield to the event loop, so a free feed decodes a whole transaction's worth of a backlog in
    one go the moment a fetch makes room, while the batch's first short statements wait for the
    loop and Postgres sits idle in its transaction. Held, that decoding runs while the ``COPY``
    is in Postgres' hands instead. A fetch always lets the feed go again.
    """

    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        settings: Settings,
        name: str,
        restart_attempts: int | None = None,
    ) -> None:
        self._restart_attempts = restart_attempts  # None: for as long as it takes
        connection = NatsConnection.from_settings(settings)  # the same options as nats-py's
        self._js = js
        self._stream = names.stream
        self._reader = StreamReader(
            js,
            connection.servers,
            names.stream,
            names.all_subjects,
            name=f"jobrunner-{name}",
            connection=connection,
        )
        self._queue: asyncio.Queue[list[tuple[int, list[Change]]]] = asyncio.Queue(QUEUED_BATCHES)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()  # set by ``close``, before its cancel
        self._reads = 0  # socket reads in the batch being gathered
        self._decoding = asyncio.Event()  # clear while the caller holds the decoding
        self._decoding.set()

    async def start(self, seq: int, stop: asyncio.Event | None = None) -> bool:
        """Open the reader at ``seq``; while JetStream cannot create its consumer (a cluster
        forming, its stream without a leader) it is tried again, as the read loop does.

        Its create waits the start's request timeout (``retry.StartTimeout``), not nats-py's
        5 s: a stream just created answers nothing until its replicas elect a leader, and the
        create sent again meets it. Safe to send again: the consumer of a create that timed
        out is left without a subscriber (its connection closed) and the server removes it
        after its inactive threshold.

        False, the reader not opened, once ``stop`` is set, during an open too (a service's
        stop while NATS is away or frozen: the tries went on until NATS answered, and the stop
        waited for it; then for the open under way, up to its timeouts) or once the caller is
        cancelled, even by a cancel the open lost."""
        failures = 0
        request_timeout = retry.StartTimeout()

        async def opened() -> bool:
            await self._reader.open(seq, request_timeout.seconds)
            return True

        while True:
            try:
                # Raced against the stop: an open waits its connect and request timeouts on a
                # frozen NATS (``nats_connect_timeout_seconds`` each), and the stop with it.
                if not await stopping.unless_stopped(opened(), stop):
                    # Cut short: its socket dropped; a consumer it made has no subscriber and
                    # expires after its inactive threshold (StreamReader's, 60 s).
                    self._reader.abort()
                    return False
                break
            except StreamReaderError as exc:
                request_timeout.after(exc)
                failures += 1
                if self._restart_attempts is not None and failures > self._restart_attempts:
                    raise
                log.warning(
                    "waiting for JetStream",
                    waiting_for="the event stream's reader",
                    reason=str(exc),
                )
                stopping.raise_if_being_cancelled()
                if stop is None:
                    await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                else:
                    await stopping.pause(stop, min(0.1 * 2**failures, 5.0))
            if stop is not None and stop.is_set():
                return False
        self._task = asyncio.create_task(self._read())
        return True

    async def fetch(
        self, timeout: float = 0.5, stop: asyncio.Event | None = None
    ) -> list[tuple[int, list[Change]]]:
        """What has arrived, up to ``FETCH_EVENTS`` events or ``FETCH_READS`` socket reads (one
        transaction's worth); waits up to ``timeout`` when nothing has, or until ``stop``."""
        assert self._task is not None
        self._decoding.set()
        if self._queue.empty():
            if self._task.done():
                self._task.result()  # raises what ended the reader
            getter = asyncio.ensure_future(self._queue.get())
            waits: set[asyncio.Future[Any]] = {getter, self._task}
            if stop is not None:
                waits.add(stop_waiting := asyncio.ensure_future(stop.wait()))
            done, _ = await asyncio.wait(
                waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if stop is not None:
                stop_waiting.cancel()
            if getter not in done:
                getter.cancel()
                if self._task in done:
                    self._task.result()
                return []
            batch = getter.result()
        else:
            batch = self._queue.get_nowait()
        self._reads = 1
        return batch + self._queued(len(batch))

    async def fetch_more(self, have: int, wait: float) -> list[tuple[int, list[Change]]]:
        """What arrives within ``wait`` seconds after ``fetch`` gave ``have`` events, up to the
        rest of a transaction's worth (``FETCH_EVENTS``, ``FETCH_READS`` with fetch's)."""
        self._decoding.set()
        await asyncio.sleep(wait)
        return self._queued(have)

    def hold(self) -> None:
        """Decode no further socket read until ``resume`` or the next fetch (what is decoded
        already is still queued)."""
        self._decoding.clear()

    def resume(self) -> None:
        self._decoding.set()

    def _queued(self, have: int) -> list[tuple[int, list[Change]]]:
        more: list[tuple[int, list[Change]]] = []
        while (
            have + len(more) < FETCH_EVENTS
            and self._reads < FETCH_READS
            and not self._queue.empty()
        ):
            more += self._queue.get_nowait()
            self._reads += 1
        return more

    async def lookup(self, seq: int) -> StoredMessage | None:
        """The message stored at ``seq`` (for the record of an event set aside); None when the
        stream no longer holds it."""
        try:
            msg = await self._js.get_msg(self._stream, seq, direct=True)
        except NotFoundError:
            return None
        return StoredMessage(msg.subject, msg.data or b"")

    async def _read(self) -> None:
        failures = 0
        # Until ``_stop`` as well as a cancel: Python 3.11's wait_for loses one that arrives as
        # its reply does (the reader's open: its PING, its consumer's creation); the read would
        # then go on for good, and ``close`` (the projector's stop) wait for it for ever.
        while not self._stop.is_set():
            try:
                if self._reader.closed:
                    await self._reader.open(self._reader.last_seq + 1)
                    if self._stop.is_set():
                        return
                async for messages in self._reader.batches():
                    failures = 0
                    if not self._decoding.is_set():
                        await self._decoding.wait()
                    batch: list[tuple[int, list[Change]]] = []
                    append = batch.append
                    for seq, data in messages:
                        # The decoder called directly and the time check inlined: two Python
                        # calls an event fewer on the replay's path (a million events).
                        # A message without NUL (nearly all) decodes into the types whose
                        # projections skip the NUL checks (nulfree.py).
                        event: AnyEvent | NulFreeEvent | None
                        # A backslash first: one byte, found at memchr's speed, and most
                        # messages hold no escape at all. Asked as the byte's value
                        # (``BACKSLASH in``): bytes' ``in`` takes an integer straight to memchr,
                        # cheaper than a ``find`` call; a bytes operand would cost it a
                        # TypeError raised and cleared every time, so the six bytes go to
                        # ``find``. Outside the ``try``: a body that is no bytes-like object is a
                        # bug to see, not a decoding failure that would send every message the
                        # slow way.
                        holds_nul = BACKSLASH in data and data.find(JSON_NUL) >= 0
                        try:
                            event = decode_known(data) if holds_nul else decode_nul_free(data)
                        except Exception:  # codec.decode, asked next, says what it was
                            try:
                                event = codec.decode(data)
                            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                                # A malformed message must not stop the read models: it is set
                                # aside (recorded) where the batch is applied.
                                unreadable: list[Change] = [
                                    Unreadable(f"{type(exc).__name__}: {exc}")
                                ]
                                append((seq, unreadable))
                                continue
                            if event is None:  # a type this version does not know
                                append((seq, []))
                                continue
                        if event.occurred_at.tzinfo is UNSENT_UTC:  # names_its_time, inlined
                            # A foreign publisher's event without its time: decoding stamped
                            # it with now, so the live read models and every replay would each
                            # store another time. Set aside, the same way every time it is read.
                            append((seq, [Unreadable(NO_TIME)]))
                            continue
                        append((seq, project(event, seq)))
                    await self._queue.put(batch)
            except StreamReaderError as exc:
                failures += 1
                if self._restart_attempts is not None and failures > self._restart_attempts:
                    raise
                log.warning("event feed restarts", after=self._reader.last_seq, reason=str(exc))
                await self._reader.close(wait_for_delete=False)
                await self._before_reopening(failures)

    async def _before_reopening(self, failures: int) -> None:
        """Wait before the reader opens again. While nats-py's connection (to the same servers)
        is down, until it is back: it tries every ``reconnect_time_wait`` (0.25 s), so the
        reader opens as soon as a server answers again instead of at the next step of a backoff
        grown during the outage (up to 5 s late). Otherwise (a server that answers but refused,
        a drop nats-py has not noticed yet, or a connection closed for good) the backoff, so a
        refusing server is not hammered and a closed connection not spun on."""
        nc = self._js._nc  # nats-py exposes the client only as ``_nc``
        # Both waits end on the stop too: a close whose cancel was lost here (a reopen refused
        # while NATS is away, the refusal and the cancel in one loop pass) would otherwise wait
        # for NATS to come back, for ever if it never does.
        if nc.is_connected or nc.is_closed:
            await stopping.pause(self._stop, min(0.1 * 2**failures, 5.0))
            return
        while not nc.is_connected and not nc.is_closed and not self._stop.is_set():
            # nats-py says it is back in no awaitable
            await stopping.pause(self._stop, RECONNECTED_POLL_SECONDS)

    async def close(self, within: float | None = None) -> None:
        """End the reading and close the reader, ``within`` seconds at most: past it (NATS not
        answering the consumer's delete, or not taking what the reader's socket still holds)
        the socket is dropped, logged: the consumer expires by itself."""
        within = CLOSE_SECONDS if within is None else within
        closing = asyncio.ensure_future(self._close())
        done, _ = await asyncio.wait({closing}, timeout=within)
        if done:
            closing.result()
            return
        log.error(
            "event feed not closed in time (nats not answering): its socket dropped",
            waited=round(within, 3),
        )
        self._reader.abort()
        closing.cancel()
        # Dropped, the socket's close ends at once and the delete takes its cancel.
        done, _ = await asyncio.wait({closing}, timeout=1.0)
        if not done:
            log.error("event feed's close left running")

    async def _close(self) -> None:
        try:
            if self._task is not None:
                self._stop.set()  # (a cancel alone can be lost: see ``_read``)
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
                except Exception as exc:  # already reported by fetch(); must not stop the close
                    log.warning("event feed ended with an error", error=repr(exc))
                self._task = None
        finally:
            await self._reader.close()
