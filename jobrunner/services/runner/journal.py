"""A runner's reads and writes of job events: the last event of a kind, and publishing an end."""

from __future__ import annotations

from typing import Any, cast

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobrunner.common import ackinbox, endings, metrics, retry
from jobrunner.common.lastevent import JOB_EVENT_OF_KIND, newest_readable
from jobrunner.common.subscription import last_stored
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, JobStatus
from jobrunner.contracts.names import Names


class JobJournal:
    def __init__(self, nc: NATS, js: JetStreamContext, names: Names, runner_id: str) -> None:
        self.js = js
        self.names = names
        self.runner_id = runner_id
        # The job's own events (``running``, artifacts) and its reads (the latest event, the
        # last of a kind) go through the connection's ack inbox: the same requests as
        # js.publish and js.get_last_msg for less CPU, and both are on every job's way to its
        # tool's start.
        self._acks = ackinbox.of(nc)

    async def last_event(self, job_id: str, kind: str) -> events.AnyEvent | None:
        """The job's newest readable event of ``kind``: a message not written by jobrunner is
        skipped, never taken for "none" (a finished job would look never started)."""
        subject = self.names.job_kind_subject(job_id, kind)
        raw = await last_stored(self._acks, self.js, self.names.stream, subject)
        if raw is None:
            return None
        found = await newest_readable(
            self.js,
            self.names.stream,
            subject,
            (raw.seq, raw.data),
            JOB_EVENT_OF_KIND[kind],
            job_id,
            # A flood of foreign messages past the read's bounds must not stop a job's start,
            # its queue or the sweep for good: the newest event found, as before bounds existed.
            best_effort=True,
        )
        # Of JOB_EVENT_OF_KIND[kind], one of the job event types.
        return None if found is None else cast("events.AnyEvent", found[1])

    async def is_latest(self, job_id: str, seq: int) -> bool:
        """Is the event at stream sequence ``seq`` the job's latest event? One read: the last
        message of all the job's subjects."""
        raw = await last_stored(
            self._acks, self.js, self.names.stream, self.names.job_subjects(job_id)
        )
        return raw is not None and raw.seq == seq

    async def last_status(self, job_id: str) -> events.StatusChanged | None:
        status = await self.last_event(job_id, "status")
        return status if isinstance(status, events.StatusChanged) else None

    async def publish(self, event: events.Publishable) -> None:
        """Publish until stored (see ``AckInbox.publish_until_stored``)."""
        await self.stored_at(event)

    async def stored_at(self, event: events.Publishable) -> int:
        """``publish``, answering the event's stream sequence."""
        return (await self._acks.publish_until_stored(self.names, event)).seq

    async def end(
        self,
        job_id: str,
        status: JobStatus,
        *,
        exit_code: int | None = None,
        error: ErrorInfo | None = None,
        cancelled_by: str | None = None,
        result: dict[str, Any] | None = None,
        job_type: str = "",
        after: int | None = None,
    ) -> None:
        """Publish the job's end. Its event id is the job's terminal id, so whoever ends a job
        first (its runner, a runner declaring it lost, a cancel) decides, and later ends are
        dropped (see ``endings.store``). ``after``: the stream sequence of the job's newest
        status as this runner stored it (its ``running``): published at once, conditionally on
        it, instead of reading the job's status subject first."""
        ending = events.StatusChanged(
            job_id=job_id,
            event_id=events.terminal_event_id(job_id),
            status=status,
            exit_code=exit_code,
            error=error,
            runner_id=self.runner_id,
            cancelled_by=cancelled_by,
            result=result,
        )
        # Inside the retry as a whole, the look for an ending after a duplicate included: a NATS
        # blip there must not raise out of end() (its caller releases the job's lock after it).
        # Retrying is safe: the ids tried are the same every time.
        stored, _, _ = await retry.until_done(
            lambda: endings.store(self.js, self.names, ending, after=after),
            f"the end of job {job_id}",
        )
        # Counted only by whoever stored the end: an end someone stored first (the API
        # cancelling a pending job, another runner declaring it lost) is not counted twice.
        if stored:
            metrics.job_ended(job_type, status.value)
