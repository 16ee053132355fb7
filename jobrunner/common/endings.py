"""Storing a job's ending once, whoever ends it and whatever else its status subject holds.

A job's ending is stored under its terminal event id, so JetStream keeps only the first when two
parties race (its runner finishing it, a cancel, a sweep declaring its runner lost, an external
worker's final report). A message jobrunner did not write may have taken that id first: JetStream
then drops the real ending as a duplicate although no ending can be read. So a duplicate is
answered by looking for any ending on the job's status subject (not only the newest status: a
runner's RUNNING may be stored after a cancel's ending), and only when there is none is the next
id of ``events.terminal_event_ids`` tried: ids every writer shares, so two racing past a foreign
message still store one ending.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.js import JetStreamContext, api

from jobrunner.common.lastevent import first_readable
from jobrunner.contracts import events
from jobrunner.contracts.names import Names

log = structlog.get_logger()


async def store(
    js: JetStreamContext,
    names: Names,
    ending: events.StatusChanged,
    publish: Callable[[events.StatusChanged], Awaitable[api.PubAck]],
) -> tuple[bool, events.StatusChanged | None]:
    """Publishes ``ending`` (with ``publish``) under the first free terminal id; answers whether
    it was stored, and else the job's ending stored first (None when none could be found: every
    id taken by foreign messages, or a flood of them hid the ending, logged as an error)."""
    subject = names.job_kind_subject(ending.job_id, "status")
    for event_id in events.terminal_event_ids(ending.job_id):
        ack = await publish(msgspec.structs.replace(ending, event_id=event_id))
        if not ack.duplicate:
            return True, None
        found, complete = await first_readable(
            js, names.stream, subject, events.StatusChanged, ending.job_id, _is_ending
        )
        if found is not None:
            return False, found[1]
        if not complete:
            # Whether an ending is stored is not known: a second one is worse than none here
            # (the job stays running to readers; its runner's lock is released all the same).
            break
    log.error("job ending not stored", job_id=ending.job_id, status=ending.status.value)
    return False, None


def _is_ending(event: events.StatusChanged) -> bool:
    return event.status.is_terminal
