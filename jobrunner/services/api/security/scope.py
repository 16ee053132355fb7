"""Scope for live streams: which events a token limited to its own jobs may receive."""

from __future__ import annotations

from collections import OrderedDict

from jobrunner.common.database import READ_SCHEMA
from jobrunner.contracts import events
from jobrunner.services.api.streamlookups import UNREADABLE, StreamLookups

REMEMBERED_OWNERS = 10_000


class OwnerFilter:
    """Passes only events of jobs requested by ``owner`` (``None``: every event passes).

    A job's owner comes from its JobRequested event when the stream shows it, else from the read
    model, asked once per job; a job the read model does not know yet, or cannot tell (Postgres
    away, or frozen past the stream's bound: streamlookups.py), is not shown.
    """

    def __init__(self, lookups: StreamLookups, owner: str | None) -> None:
        self.lookups = lookups
        self.owner = owner
        self._owners: OrderedDict[str, str | None] = OrderedDict()

    def _remember(self, job_id: str, owner: str | None) -> None:
        self._owners[job_id] = owner
        self._owners.move_to_end(job_id)
        if len(self._owners) > REMEMBERED_OWNERS:
            self._owners.popitem(last=False)

    async def visible(self, event: events.Event) -> bool:
        if self.owner is None:
            return True
        if isinstance(event, events.JobRequested):
            self._remember(event.job_id, event.requested_by)
        if event.job_id not in self._owners:
            try:
                owner = await self.lookups.fetchval(
                    f"SELECT requested_by FROM {READ_SCHEMA}.jobs WHERE id = $1", event.job_id
                )
            except UNREADABLE:
                # Fail closed: an event whose job's owner cannot be read is not shown (and the
                # owner asked again at the job's next event), rather than the stream ending.
                return False
            self._remember(event.job_id, owner)
        return self._owners[event.job_id] == self.owner
