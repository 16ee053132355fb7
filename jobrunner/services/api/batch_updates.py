"""``batch_update``: a batch's row, sent on ``/api/jobs/stream`` when its counters or status may
have changed.

A batch's counters are counted by the projector (projector/batchcounts.py), not from the events
here: so the stream notes which batches the events it passes touch (a job of the batch requested
or changing status, any batch event), waits until the projector has applied those events, and
sends each touched batch's row once per read of the stream (coalesced), with the stream
sequence of the last event that touched it as the frame's ``id``. Frames leave in sequence order:
``Last-Event-ID`` resumes after the last frame received, with nothing skipped.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator

from jobrunner.common.database import READ_SCHEMA
from jobrunner.contracts import events
from jobrunner.services.api import batch_readmodels, sse
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.streamlookups import UNREADABLE, StreamLookups

EVENT_NAME = "batch_update"
# Jobs whose batch one connection remembers (a job first seen through a later event is looked up).
REMEMBERED_JOBS = 10_000


class BatchUpdates:
    """The batches one stream has to send again, and the rows to send."""

    def __init__(
        self,
        ctx: ApiContext,
        owner: str | None,
        lookups: StreamLookups,
        size: int = REMEMBERED_JOBS,
    ) -> None:
        self._ctx = ctx
        self._lookups = lookups  # the stream's reads of the read models (streamlookups.py)
        self._owner = owner  # a token limited to its own jobs sees only the batches it requested
        self._size = size
        self._batch_of: OrderedDict[str, str | None] = OrderedDict()
        self.pending: dict[str, int] = {}  # batch id -> stream sequence of its last touch

    def needs_lookup(self, event: events.AnyEvent) -> bool:
        """Whether ``note`` must ask the read model for the event's job's batch first; else
        ``note_known`` does the same without an ``await`` (one per event of a catch-up)."""
        return isinstance(event, events.StatusChanged) and event.job_id not in self._batch_of

    async def note(self, event: events.AnyEvent, seq: int) -> None:
        """Remember the batch ``event`` (at stream sequence ``seq``) touches, if any."""
        if isinstance(event, events.StatusChanged) and self.needs_lookup(event):
            await self._batch_of_job(event.job_id)  # remembered when the read model has it
        self.note_known(event, seq)

    def note_known(self, event: events.AnyEvent, seq: int) -> None:
        """``note`` for an event whose batch needs no look-up."""
        if isinstance(event, events.BatchEvent):
            batch_id: str | None = event.batch_id
        elif isinstance(event, events.JobRequested):
            batch_id = event.batch_id
            self._remember(event.job_id, batch_id)
        elif isinstance(event, events.StatusChanged):
            if event.job_id not in self._batch_of:
                return  # not projected yet: asked again at its next event
            self._batch_of.move_to_end(event.job_id)
            batch_id = self._batch_of[event.job_id]
        else:
            return  # progress, lines, cancel requests and archiving change no counter
        if batch_id is not None:
            self.pending[batch_id] = seq

    def knows(self, job_id: str) -> bool:
        return job_id in self._batch_of

    def seed(self, job_id: str, batch_id: str | None) -> None:
        """The batch of a job the read model shows (read ahead for a whole read)."""
        if job_id not in self._batch_of:
            self._remember(job_id, batch_id)

    async def wait_applied(self, wake: asyncio.Event) -> AsyncIterator[None]:
        """Until the projector has applied every pending touch; yields once per keep-alive
        interval it waits longer (the caller sends a keep-alive comment), and as soon as
        ``wake`` is set (the caller has news for its viewer: NATS went silent, or is back)."""
        if not self.pending:
            return
        target = max(self.pending.values())
        keepalive = self._ctx.settings.sse_keepalive_seconds
        while not await self._applied(target, keepalive, wake):
            yield

    async def frames(self) -> list[tuple[int, bytes]]:
        """``(stream sequence, frame)`` for every pending batch the caller may see; clears them
        once read (a read that fails, Postgres away or frozen, keeps them for the next try).
        Call once ``wait_applied`` is through."""
        if not self.pending:
            return []
        touched = self.pending
        rows = await self._lookups.fetch(
            f"SELECT {batch_readmodels.BATCH_COLUMNS} FROM {READ_SCHEMA}.batches "
            "WHERE id = ANY($1::text[])",
            list(touched),
        )
        self.pending = {}
        out = []
        for row in rows:
            if self._owner is not None and row["requested_by"] != self._owner:
                continue
            seq = touched[row["id"]]
            batch = batch_readmodels.batch_from_row(row)
            out.append((seq, sse.frame(batch, event=EVENT_NAME, id=str(seq))))
        return out

    async def _applied(self, seq: int, wait: float, wake: asyncio.Event) -> bool:
        projection = self._ctx.projection
        if projection.applied >= seq:
            return True
        # The projector's notices only come when it applies something: ask Postgres too.
        try:
            stored = await self._lookups.fetchval(f"SELECT last_seq FROM {READ_SCHEMA}.checkpoint")
        except UNREADABLE:
            stored = None  # nor can the projector apply anything: its notice is waited for
        if stored is not None and stored >= seq:
            return True
        # The projector's notices come through NATS: a silent NATS holds this wait, which is
        # when the viewer most needs telling (``wake``), not a keep-alive interval later.
        applied = asyncio.ensure_future(projection.wait_for(seq, wait))
        woken = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait([applied, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            applied.cancel()  # done already, or given up for the news: asked again after it
        return applied.done() and not applied.cancelled() and applied.result()

    async def _batch_of_job(self, job_id: str) -> str | None:
        if job_id in self._batch_of:
            self._batch_of.move_to_end(job_id)
            return self._batch_of[job_id]
        try:
            row = await self._lookups.fetchrow(
                f"SELECT batch_id FROM {READ_SCHEMA}.jobs WHERE id = $1", job_id
            )
        except UNREADABLE:
            return None  # asked again at its next event, as a job not projected yet
        if row is None:
            return None  # not projected yet: asked again at its next event, not remembered
        batch_id: str | None = row["batch_id"]
        self._remember(job_id, batch_id)
        return batch_id

    def _remember(self, job_id: str, batch_id: str | None) -> None:
        self._batch_of[job_id] = batch_id
        self._batch_of.move_to_end(job_id)
        if len(self._batch_of) > self._size:
            self._batch_of.popitem(last=False)
