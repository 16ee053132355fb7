"""The newest event of a job's (or batch's) subject that this version can read.

Anyone with publish rights on the stream can store on a job's subject a message jobrunner did not
write: one that does not decode, an event type of a newer version, an event of another kind, one
naming another job. Every "latest status / request / cancel" read asks for the subject's newest
message; taking such a message for "none" hides the event before it: a finished job whose status
subject ends in junk would look never started to a runner (which would run it again) and to the
API (which would take its worker's reports again). So such a message is skipped, as the projector
sets it aside, with a warning naming its subject and stream sequence, and the subject is read back
for the newest readable event before it.

Reading back first reads the subject's first messages (``FIRST_MOST``), where jobrunner's own
events of a job are, then the messages before the newest one, one direct message-get each; one
read stops at ``LOOKBACK_MOST`` messages, ``LOOKBACK_BYTES`` of data or ``LOOKBACK_SECONDS``,
whichever comes first: a flood of foreign messages after an ending costs a bounded read and still
finds it. A read the bounds stop before it knows the newest readable event (an event behind more
foreign messages than they let it read) raises ``ReadIncomplete`` rather than answer an older
event or "none".
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec
import nats.errors
import structlog
from nats.js import JetStreamContext

from jobrunner.common import ackinbox
from jobrunner.common.subscription import StoredMessage, last_message, next_stored
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import KIND_BY_EVENT

log = structlog.get_logger()

E = TypeVar("E", bound=events.Event | events.BatchEvent)

# One read back (or forwards) stops at whichever bound it reaches first: a flood of foreign
# messages on a subject costs every reader of it a bounded read, not one per message.
LOOKBACK_MOST = 256  # messages
LOOKBACK_BYTES = 4 * 1024 * 1024  # of their data
LOOKBACK_SECONDS = 1.0
FIRST_MOST = 8  # the subject's first messages, read first
FIRST_STRETCH = 64  # stream sequences

_ONE_TOKEN = re.compile(r"^[^.*>\s]+\Z")

# The event type each kind of a job's subject holds (``<prefix>.job.<id>.<kind>``).
JOB_EVENT_OF_KIND: dict[str, type[events.Event]] = {
    kind: event for event, kind in KIND_BY_EVENT.items() if issubclass(event, events.Event)
}

# Subjects and sequences already warned about: a reader asked again and again (a runner's
# redeliveries, a client polling) warns once per message. Cleared when full.
_warned: set[tuple[str, int]] = set()
_WARNED_MOST = 4096


def readable(data: bytes, kind: type[E], owner: str) -> E | str:
    """The ``kind`` event of job (or batch) ``owner`` that ``data`` holds, else why it is none."""
    try:
        event = codec.decode(data)
    except msgspec.MsgspecError as exc:
        return f"{type(exc).__name__}: {exc}"
    if event is None:
        return "an event type this version does not know"
    if not isinstance(event, kind):
        return f"a {type(event).__name__} where a {kind.__name__} belongs"
    named = event.batch_id if isinstance(event, events.BatchEvent) else event.job_id
    if named != owner:
        return f"an event of {named!r} on the subject of {owner!r}"
    return event


async def newest_readable(
    js: JetStreamContext,
    stream: str,
    subject: str,
    newest: tuple[int, bytes],
    kind: type[E],
    owner: str,
    *,
    best_effort: bool = False,
) -> tuple[int, E] | None:
    """``newest`` (the subject's newest message: its stream sequence and data) as a ``kind``
    event of ``owner``, or, when it is none, the newest one stored before it on ``subject``
    (None: there is none), read back within bounds (``ReadIncomplete`` when they stop it before
    it knows, or with ``best_effort`` the newest one it read)."""
    seq, data = newest
    found = readable(data, kind, owner)
    if not isinstance(found, str):
        return seq, found
    if not _ONE_TOKEN.match(owner):
        # An id from a path with a dot or a wildcard names several subjects, none of them its own.
        return None
    _warn(subject, seq, found)
    reading = _Reading(js, stream, subject, kind, owner)
    if not await reading.back_from(seq):
        log.warning("read-back cut short", subject=subject, newest_seq=seq, read=reading.read)
        if not best_effort:
            raise ReadIncomplete(f"the newest readable event on {subject} is not known")
    return reading.best


class ReadIncomplete(nats.errors.Error):
    """The bounds stopped a read back before it knew the newest readable event of a subject:
    the newest one it read may be older than the newest one stored. Raised to the API (which
    answers 503 ``EVENT_STORE_UNAVAILABLE``), never taken there for an answer, "none" or an
    older event; the runner's and notifier's reads ask for the best found instead
    (``best_effort``): there it would stop a job, a queue or a sweep for good."""


class Scan(NamedTuple, Generic[E]):
    """What ``first_readable`` found: the first wanted event (and its stream sequence), whether
    the read got to the subject's end (False: the bounds stopped it first, so "none" is not
    known), and the stream sequence of the last message it read on the subject (0: none). When
    nothing was found and the read was complete, ``last`` was the subject's last message when
    the server answered that there was none after it: a write conditional on it (JetStream's
    ``Nats-Expected-Last-Subject-Sequence``) is refused if anything was stored since."""

    found: tuple[int, E] | None
    complete: bool
    last: int


async def first_readable(
    js: JetStreamContext,
    stream: str,
    subject: str,
    kind: type[E],
    owner: str,
    wanted: Callable[[E], bool],
) -> Scan[E]:
    """The first ``kind`` event of ``owner`` on ``subject`` that is ``wanted`` (a job's ending,
    say), reading forwards from the subject's first message (see ``Scan``)."""
    if not _ONE_TOKEN.match(owner):
        return Scan(None, True, 0)
    reading = _Reading(js, stream, subject, kind, owner)
    found = await reading.first(wanted)
    if found is None and reading.cut_short:
        log.warning("read-forward cut short", subject=subject, read=reading.read)
    return Scan(found, found is not None or not reading.cut_short, reading.last)


class _Reading:
    """One bounded read of a subject: at most ``LOOKBACK_MOST`` messages, ``LOOKBACK_BYTES`` of
    them and no request begun after ``LOOKBACK_SECONDS``, one direct message-get each. (A
    deadline checked between requests, not a timeout around them: a request NATS does not
    answer raises, as every NATS error does, for the caller to retry, never taken for "none".)"""

    def __init__(
        self, js: JetStreamContext, stream: str, subject: str, kind: type[E], owner: str
    ) -> None:
        self.js, self.stream, self.subject, self.kind, self.owner = js, stream, subject, kind, owner
        self.inbox = ackinbox.of(js._nc)  # nats-py exposes the client only as ``_nc``
        self.read = 0
        self.bytes = 0
        self.cut_short = False
        self.best: tuple[int, Any] | None = None
        self.last = 0  # the last message read (``first``)
        self.deadline = asyncio.get_running_loop().time() + LOOKBACK_SECONDS

    async def back_from(self, seq: int) -> bool:
        """Sets ``best`` to the newest readable event before ``seq``; answers whether it is
        known (False: the bounds stopped the read first). JetStream reads a subject forwards
        only. First the subject's first messages, where jobrunner's own events of a job (its
        request, running, its ending) are, whatever came after them. Then the stretches of the
        stream before ``seq``, growing fourfold, down to where the first read stopped: the
        newest is found reading little more than the messages after it. The newest readable
        event of a stretch is the answer only once the whole stretch is read: one cut short in
        its middle may have a newer one after where it stopped."""
        head_end = await self._scan(1, seq, FIRST_MOST)
        if _is_ending(self.best):
            # A job's ending is its last status: JetStream drops every later one, and jobrunner
            # writes no other status after it. Nothing after it need be read.
            return True
        if self.cut_short:
            return False
        if head_end >= seq:
            return True
        head_best, self.best = self.best, None
        end, width = seq, FIRST_STRETCH
        while end > head_end:
            start = max(head_end, end - width)
            await self._scan(start, end, LOOKBACK_MOST)
            if self.cut_short:
                self.best = self.best or head_best  # the best found, for ``best_effort``
                return False
            if self.best is not None:
                return True
            end, width = start, width * 4
        self.best = head_best
        return True

    async def first(self, wanted: Callable[[Any], bool]) -> tuple[int, Any] | None:
        at = 1
        while (msg := await self._next(at)) is not None:
            self.last = msg.seq
            event = readable(msg.data, self.kind, self.owner)
            if not isinstance(event, str) and wanted(event):
                return msg.seq, event
            at = msg.seq + 1
        return None

    async def _scan(self, start: int, end: int, most: int) -> int:
        """Reads the subject from ``start`` to before ``end`` (at most ``most`` messages), the
        newest readable one kept in ``best``; answers where the read stopped (``end`` when it
        got there)."""
        at = start
        for _ in range(most):
            msg = await self._next(at)
            if msg is None or msg.seq >= end:
                return end
            earlier = readable(msg.data, self.kind, self.owner)
            if isinstance(earlier, str):
                _warn(self.subject, msg.seq, earlier)
            else:
                self.best = msg.seq, earlier
            at = msg.seq + 1
        return at

    async def _next(self, seq: int) -> StoredMessage | None:
        if self.read >= LOOKBACK_MOST or self.bytes >= LOOKBACK_BYTES:
            self.cut_short = True
            return None
        if asyncio.get_running_loop().time() >= self.deadline:
            # A bound like the others, never an error to retry: a read kept slow by a busy host
            # or a distant server (10 ms a request: 100 foreign messages) would be retried, and
            # slow again, for ever. A request NATS does not answer raises as any NATS error.
            self.cut_short = True
            return None
        self.read += 1
        msg = await next_stored(self.inbox, self.js, self.stream, self.subject, seq)
        if msg is not None:
            self.bytes += len(msg.data)
        return msg


async def last_readable(
    js: JetStreamContext,
    stream: str,
    subject: str,
    kind: type[E],
    owner: str,
    *,
    best_effort: bool = False,
) -> tuple[int, E] | None:
    """The newest ``kind`` event of ``owner`` on ``subject`` and its stream sequence, or None
    when the subject holds none (see ``newest_readable``)."""
    raw = await last_message(js, stream, subject)
    if raw is None or raw.seq is None:
        return None
    return await newest_readable(
        js, stream, subject, (raw.seq, raw.data or b""), kind, owner, best_effort=best_effort
    )


def _is_ending(found: tuple[int, Any] | None) -> bool:
    return (
        found is not None
        and isinstance(found[1], events.StatusChanged)
        and found[1].status.is_terminal
    )


def _warn(subject: str, seq: int, reason: str) -> None:
    if (subject, seq) in _warned:
        return
    if len(_warned) >= _WARNED_MOST:
        _warned.clear()
    _warned.add((subject, seq))
    log.warning("unreadable event skipped", subject=subject, stream_seq=seq, reason=reason)
