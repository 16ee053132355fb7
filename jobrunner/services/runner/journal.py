"""A runner's reads and writes of job events: the last event of a kind, and publishing an end."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobrunner.common import ackinbox, endings, eventstore, metrics, retry
from jobrunner.common.lastevent import JOB_EVENT_OF_KIND, Scan, newest_readable
from jobrunner.common.subscription import last_stored
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import ErrorInfo, JobStatus
from jobrunner.contracts.names import Names

log = structlog.get_logger()


class Newest(NamedTuple):
    """A job's newest readable event of a kind (None: none) and its stream sequence (0: none),
    and the stream sequence of its subject's last message, whoever wrote it (0: the subject is
    empty): a write conditional on ``last`` is refused if anything was stored there since."""

    event: events.AnyEvent | None
    seq: int
    last: int

    @property
    def condition(self) -> int | None:
        """What a write that must follow this read directly is conditional on: ``last``; None
        when the read found only messages jobrunner did not write: a read cut short by its
        bounds (a NATS pause, a flood) may have missed a status behind them, so the subject is
        to be read forwards (``endings.first_status``) before anything is stored on it."""
        return None if self.event is None and self.last else self.last


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
        return (await self.newest(job_id, kind)).event

    async def newest(self, job_id: str, kind: str) -> Newest:
        """``last_event``, with its stream sequence and its subject's last one (``Newest``)."""
        subject = self.names.job_kind_subject(job_id, kind)
        raw = await last_stored(self._acks, self.js, self.names.stream, subject)
        if raw is None:
            return Newest(None, 0, 0)
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
        if found is None:
            return Newest(None, 0, raw.seq)
        # Of JOB_EVENT_OF_KIND[kind], one of the job event types.
        return Newest(cast("events.AnyEvent", found[1]), found[0], raw.seq)

    async def first_status(self, job_id: str) -> Scan[events.StatusChanged]:
        """The job's first readable status, read forwards (``endings.first_status``)."""
        return await endings.first_status(self.js, self.names, job_id)

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

    async def cancel_of(self, job_id: str) -> events.CancelRequested | None:
        """The job's stored cancel, if anyone asked for one."""
        cancel = await self.last_event(job_id, "cancel")
        return cancel if isinstance(cancel, events.CancelRequested) else None

    async def end_lost(
        self,
        job_id: str,
        cancel: events.CancelRequested | None,
        error: ErrorInfo,
        job_type: str = "",
    ) -> None:
        """End a job whose runner is gone with ``error`` (``RUNNER_LOST``): CANCELLED by whoever
        asked when ``cancel`` (its ``cancel_of``, read just before) was stored, as its runner
        would have ended it had it lived to act on it; else FAILED. The error rides on the
        cancelled ending too: the tool's end was never seen (no exit code), and the job's record
        is where an operator reads why. Every way a runner finds a dead one's job ends it here.
        A cancel stored after that read is still accepted (the API answers 202 until its read
        model shows the end) and leaves the job FAILED: the first ending stays
        (``endings.store``)."""
        if cancel is not None:
            log.info("lost job was cancelled", lost_job_id=job_id, cancelled_by=cancel.requested_by)
            await self.end(
                job_id,
                JobStatus.CANCELLED,
                cancelled_by=cancel.requested_by,
                error=error,
                job_type=job_type,
            )
        else:
            await self.end(job_id, JobStatus.FAILED, error=error, job_type=job_type)

    async def publish(self, event: events.Publishable) -> None:
        """Publish until stored (see ``AckInbox.publish_until_stored``)."""
        await self.stored_at(event)

    async def stored_at(self, event: events.Publishable) -> int:
        """``publish``, answering the event's stream sequence."""
        return (await self._acks.publish_until_stored(self.names, event)).seq

    async def stored_after(self, event: events.Publishable, after: int) -> int | None:
        """``stored_at``, stored only if the stream sequence of the last message on the event's
        subject is still ``after`` (0: the subject is empty); None when JetStream refused it
        (something was stored there since). The condition rides on the publish: no round trip
        more. NATS being away is waited out as ``publish`` does, every try with the event's
        id: JetStream checks the id before the condition, so a try after one that was stored
        but whose ack was lost is answered as a duplicate with the first copy's sequence; once
        the duplicate window has passed it is refused instead, and the caller must look for
        its own copy (``RUNNING`` started: see ``executor``)."""
        subject = self.names.subject(event)
        data = codec.encode(event)
        headers = eventstore.headers(event, after)

        async def attempt() -> int | None:
            published = self._acks.publish_headed(subject, data, headers)
            ack = await eventstore.unless_wrong_last(published)
            return None if ack is None else ack.seq

        what = f"event {type(event).__name__} {event.event_id} on {subject}"
        return await retry.until_done(attempt, what)

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
