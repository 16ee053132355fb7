"""The newest event of a job's (or batch's) subject that this version can read.

Anyone with publish rights on the stream can store on a job's subject a message jobrunner did not
write: one that does not decode, an event type of a newer version, an event of another kind, one
naming another job. Every "latest status / request / cancel" read asks for the subject's newest
message; taking such a message for "none" hides the event before it: a finished job whose status
subject ends in junk would look never started to a runner (which would run it again) and to the
API (which would take its worker's reports again). So such a message is skipped, as the projector
sets it aside, with a warning naming its subject and stream sequence, and the subject is read back
for the newest readable event before it.

Reading back costs about one request per message of the subject after the readable event (and one
per stretch of the stream looked through), at most ``LOOKBACK_MOST`` and as many again for the
subject's first messages: a flood of foreign messages on one subject costs a bounded read.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobrunner.common.subscription import last_message
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import KIND_BY_EVENT

log = structlog.get_logger()

E = TypeVar("E", bound=events.Event | events.BatchEvent)

LOOKBACK_MOST = 1000
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
) -> tuple[int, E] | None:
    """``newest`` (the subject's newest message: its stream sequence and data) as a ``kind``
    event of ``owner``, or, when it is none, the newest one stored before it on ``subject``."""
    seq, data = newest
    found = readable(data, kind, owner)
    if not isinstance(found, str):
        return seq, found
    if not _ONE_TOKEN.match(owner):
        # An id from a path with a dot or a wildcard names several subjects, none of them its own.
        return None
    _warn(subject, seq, found)
    # JetStream reads a subject forwards only (the next message from a sequence on). First the
    # stretch of the stream before the newest message, growing fourfold until it holds a
    # readable event: the newest is found reading little more than the messages after it. Should
    # a flood of foreign messages exhaust that, the subject's first messages, where jobrunner's
    # own events of a job (its request, running, its ending) come before anything written later.
    end, width, budget = seq, FIRST_STRETCH, LOOKBACK_MOST
    while end > 1 and budget > 0:
        start = max(1, end - width)
        best, budget = await _scan(js, stream, subject, start, end, kind, owner, budget)
        if best is not None:
            return best
        end, width = start, width * 4
    if end > 1:
        best, _ = await _scan(js, stream, subject, 1, seq, kind, owner, LOOKBACK_MOST)
        return best
    return None


async def _scan(
    js: JetStreamContext,
    stream: str,
    subject: str,
    start: int,
    end: int,
    kind: type[E],
    owner: str,
    budget: int,
) -> tuple[tuple[int, E] | None, int]:
    """The newest readable event on ``subject`` from ``start`` to before ``end``, reading at
    most ``budget`` messages; and what is left of the budget."""
    best: tuple[int, E] | None = None
    at = start
    while budget > 0:
        budget -= 1
        try:
            msg = await js.get_msg(stream, seq=at, subject=subject, next=True)
        except NotFoundError:
            break
        if msg.seq is None or msg.seq >= end:
            break
        earlier = readable(msg.data or b"", kind, owner)
        if isinstance(earlier, str):
            _warn(subject, msg.seq, earlier)
        else:
            best = msg.seq, earlier
        at = msg.seq + 1
    return best, budget


async def last_readable(
    js: JetStreamContext, stream: str, subject: str, kind: type[E], owner: str
) -> tuple[int, E] | None:
    """The newest ``kind`` event of ``owner`` on ``subject`` and its stream sequence, or None
    when the subject holds none (see ``newest_readable``)."""
    raw = await last_message(js, stream, subject)
    if raw is None or raw.seq is None:
        return None
    return await newest_readable(js, stream, subject, (raw.seq, raw.data or b""), kind, owner)


def _warn(subject: str, seq: int, reason: str) -> None:
    if (subject, seq) in _warned:
        return
    if len(_warned) >= _WARNED_MOST:
        _warned.clear()
    _warned.add((subject, seq))
    log.warning("unreadable event skipped", subject=subject, stream_seq=seq, reason=reason)
