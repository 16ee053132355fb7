"""A job's statuses as the stream holds them, for tests that check what was published."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobrunner.common import lastevent
from jobrunner.contracts import events
from jobrunner.contracts.names import Names


async def status_messages(
    js: JetStreamContext, names: Names, job_id: str
) -> list[events.StatusChanged | None]:
    """Every message on the job's status subject, oldest first: its event, None where it is not
    a readable ``StatusChanged`` of this job (a foreign message)."""
    subject = names.job_kind_subject(job_id, "status")
    out: list[events.StatusChanged | None] = []
    at = 1
    while True:
        try:
            msg = await js.get_msg(names.stream, seq=at, subject=subject, next=True)
        except NotFoundError:
            return out
        assert msg.seq is not None
        event = lastevent.readable(msg.data or b"", events.StatusChanged, job_id)
        out.append(event if isinstance(event, events.StatusChanged) else None)
        at = msg.seq + 1


async def statuses(js: JetStreamContext, names: Names, job_id: str) -> list[str]:
    """Every message on the job's status subject, oldest first: its status, or "foreign"."""
    return [
        "foreign" if event is None else event.status.value
        for event in await status_messages(js, names, job_id)
    ]


async def terminal_statuses(js: JetStreamContext, names: Names, job_id: str) -> list[str]:
    """The event ids of the job's readable endings on its status subject, oldest first."""
    return [
        event.event_id
        for event in await status_messages(js, names, job_id)
        if event is not None and event.status.is_terminal
    ]
