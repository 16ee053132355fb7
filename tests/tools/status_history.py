"""A job's statuses as the stream holds them, for tests that check what was published."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobrunner.common import lastevent
from jobrunner.contracts import events
from jobrunner.contracts.names import Names


async def statuses(js: JetStreamContext, names: Names, job_id: str) -> list[str]:
    """Every message on the job's status subject, oldest first: its status, or "foreign"."""
    subject = names.job_kind_subject(job_id, "status")
    out: list[str] = []
    at = 1
    while True:
        try:
            msg = await js.get_msg(names.stream, seq=at, subject=subject, next=True)
        except NotFoundError:
            return out
        assert msg.seq is not None
        event = lastevent.readable(msg.data or b"", events.StatusChanged, job_id)
        out.append(event.status.value if isinstance(event, events.StatusChanged) else "foreign")
        at = msg.seq + 1
