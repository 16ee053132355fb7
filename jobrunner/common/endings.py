"""Storing a job's ending once, whoever ends it and whatever else its status subject holds.

A job's ending is stored under its terminal event id, so JetStream keeps only the first when two
parties race (its runner finishing it, a cancel, a sweep declaring its runner lost, an external
worker's final report). That holds only within the stream's duplicate window (2 minutes): a
runner cut off from NATS for longer, or a tool that ignores SIGTERM for longer after a cancel
stored the job's ending, would have its own ending stored as a second one. So every ending is
also conditional on its status subject's last stream sequence (JetStream's
``Nats-Expected-Last-Subject-Sequence``): one that knows it (a runner's ``running``, the empty
subject of a job a cancel finds pending) is published at once, the subject's read skipped; any
other, and one refused because something was stored there since, reads the subject first.

A message jobrunner did not write may have taken the terminal id first: JetStream then drops the
real ending as a duplicate although no ending can be read. So a duplicate, like a refused write,
is answered by reading the job's status subject forwards for any ending (not only the newest
status: a runner's RUNNING may be stored after a cancel's ending), and only when there is none is
the ending stored, conditionally on the last message that read saw, under the next id of
``events.terminal_event_ids`` (ids every writer shares) when the one tried was a duplicate.
A read cut short by its bounds (more foreign messages than it takes, a NATS pause or a slow
server past its time bound) stores the ending without the condition, as before endings had one
(``_store_unread``): an ending is never given up for a flood, a pause or a slow server.

The ending of the API's cancel of a job it saw pending is stored only while the job has not
started (``unless_started``): a started job is its runner's to end, with its tool's exit code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import msgspec
import structlog
from nats.js import JetStreamContext

from jobrunner.common import ackinbox, eventstore
from jobrunner.common.lastevent import Scan, first_readable, readable
from jobrunner.common.subscription import next_stored
from jobrunner.contracts import events
from jobrunner.contracts.names import Names

log = structlog.get_logger()

# Reads of the status subject before giving up, each after a write it refused or a duplicate:
# writers racing to end one job are a handful at most, foreign messages on one id each.
MOST_READS = 12


class Stored(NamedTuple):
    """Whether the ending was stored here; else the job's ending stored first, or, for an ending
    stored ``unless_started``, the ``running`` of the job that started (None when neither could
    be found); and the stream sequence of whichever it is (0: none)."""

    stored: bool
    first: events.StatusChanged | None
    seq: int


async def store(
    js: JetStreamContext,
    names: Names,
    ending: events.StatusChanged,
    *,
    after: int | None = None,
    unless_started: bool = False,
) -> Stored:
    """Stores ``ending`` unless the job has one, under the first free terminal id; with
    ``unless_started`` (a cancel of a job seen pending) also unless it started: its first status
    is then the answer, a ``running`` included, and the job is its runner's to end. ``after``:
    the stream sequence the caller knows its status subject's last message has (0: empty): the
    ending is published at once, conditionally on it, and the subject is read only if it was
    refused or a duplicate. A read the bounds cut short (a flood of foreign messages, a NATS
    pause or a slow server past its time bound) stores the ending without a condition
    (``_store_unread``), as the duplicate window alone did before. No ending stored and none
    found (every id taken by foreign messages, or writers kept getting in first) is logged as an
    error."""
    ids = events.terminal_event_ids(ending.job_id)
    found_by = _any_status if unless_started else _is_ending
    at = 0
    if after is not None:
        ack = await _publish(js, names, ending, ids[at], after)
        if ack is not None and not ack.duplicate:
            return Stored(True, None, ack.seq)
        if ack is not None:
            at += 1
    for _ in range(MOST_READS):
        found, complete, last = await first_status(js, names, ending.job_id, found_by)
        if found is not None and not found[1].status.is_terminal:
            # Started: it may have ended since, and its ending is then the answer (a cancel of
            # a job that ended answers JOB_FINISHED). Read again only in this race.
            ended = (await first_status(js, names, ending.job_id, _is_ending)).found
            found = ended or found
        if found is not None:
            return Stored(False, found[1], found[0])
        if not complete:
            return await _store_unread(js, names, ending, ids)
        if at == len(ids):
            # Foreign messages hold every id: a second ending is worse than none here (the job
            # stays running to readers; its runner's lock is released all the same).
            break
        ack = await _publish(js, names, ending, ids[at], last)
        if ack is None:
            continue  # something was stored on the subject since it was read: read again
        if not ack.duplicate:
            return Stored(True, None, ack.seq)
        at += 1
    log.error("job ending not stored", job_id=ending.job_id, status=ending.status.value)
    return Stored(False, None, 0)


async def first_status(
    js: JetStreamContext,
    names: Names,
    job_id: str,
    wanted: Callable[[events.StatusChanged], bool] = lambda _: True,
) -> Scan[events.StatusChanged]:
    """The job's first readable status that is ``wanted`` (any, unless told), reading its status
    subject forwards from its first message within ``lastevent``'s bounds (see ``Scan``). Read
    forwards, foreign messages after a status cannot hide it; a runner's or the API's ``running``
    refused on its condition reads this way too."""
    subject = names.job_kind_subject(job_id, "status")
    return await first_readable(js, names.stream, subject, events.StatusChanged, job_id, wanted)


async def publish_with_endings(
    js: JetStreamContext, names: Names, batch: Sequence[events.Publishable]
) -> tuple[int, dict[str, Stored]]:
    """Publishes ``batch`` in one pipeline (the events of a cancel, say), each job's ending in it
    conditionally on the job's status subject being empty (a job a cancel finds pending has
    none): only an ending that was refused or a duplicate goes through ``store``, ``unless_started``
    (it finds the ending stored first, its runner's say, or the ``running`` of a job that started
    meanwhile, or stores it under the next id). The last stream sequence (of the batch's events
    and the statuses stored or found), and each ending's job's ``Stored``.

    A job the caller saw pending may have started since (the read model lags behind the stream,
    seconds on a loaded machine): its ending is then its runner's, which stops the tool on the
    cancel and reports its exit code. Stored here after the ``running``, this ending would take
    the job's terminal id first, and the runner's ending, with the exit code, would be dropped
    as a second one."""
    acks = await eventstore.publish_many_acked(
        js, names, [(e, 0 if _ends(e) else None) for e in batch]
    )
    last = 0
    outcomes: dict[str, Stored] = {}
    for event, ack in zip(batch, acks, strict=True):
        if isinstance(event, events.StatusChanged) and _ends(event):
            if ack is None or ack.duplicate:
                outcome = await store(js, names, event, unless_started=True)
            else:
                outcome = Stored(True, None, ack.seq)
            outcomes[event.job_id] = outcome
            last = max(last, outcome.seq)
        elif ack is not None:
            last = max(last, ack.seq)
    return last, outcomes


async def _store_unread(
    js: JetStreamContext, names: Names, ending: events.StatusChanged, ids: Sequence[str]
) -> Stored:
    """``ending`` stored under the first of ``ids`` free (each duplicate's message read: it may
    be the ending the read did not get to), without a condition, as before endings
    had one: a flood of foreign messages on the status subject (more than a read takes) hides
    whether it holds an ending, and no condition can be known to hold. The duplicate window still
    keeps a second ending of one id out; a job left running for ever would be worse than the rare
    second ending past it. A duplicate's ack names the message stored first under that id: an
    ending (a retried final report finds its own), or a foreign message (the next id is tried)."""
    subject = names.job_kind_subject(ending.job_id, "status")
    for event_id in ids:
        ack = await eventstore.publish_acked(
            js, names, msgspec.structs.replace(ending, event_id=event_id)
        )
        if not ack.duplicate:
            return Stored(True, None, ack.seq)
        msg = await next_stored(ackinbox.of(js._nc), js, names.stream, subject, ack.seq)
        if msg is not None and msg.seq == ack.seq:
            first = readable(msg.data, events.StatusChanged, ending.job_id)
            if isinstance(first, events.StatusChanged) and _is_ending(first):
                return Stored(False, first, ack.seq)
    log.error("job ending not stored", job_id=ending.job_id, status=ending.status.value)
    return Stored(False, None, 0)


def _ends(event: events.Publishable) -> bool:
    return isinstance(event, events.StatusChanged) and event.status.is_terminal


async def _publish(
    js: JetStreamContext, names: Names, ending: events.StatusChanged, event_id: str, after: int
) -> ackinbox.PubAck | None:
    """JetStream's ack of ``ending`` under ``event_id``, stored only if its subject's last
    message is still ``after``; None when it was not."""
    named = msgspec.structs.replace(ending, event_id=event_id)
    return await eventstore.unless_wrong_last(
        eventstore.publish_acked(js, names, named, expected_last=after)
    )


def _is_ending(event: events.StatusChanged) -> bool:
    return event.status.is_terminal


def _any_status(event: events.StatusChanged) -> bool:
    return True
