"""The request loop: JobRequested taken from the shared durable consumer while there is capacity,
each handled by its own task; and cancel requests passed to the job they name.

At the runner's stop every job it handles is told (``RunningJob.stop_for_runner``), which is not
a cancel: one whose tool runs (or external job it holds) ends failed RUNNER_STOPPED; one still
waiting for its slot, capacity or batch's seal gives its request back, unended, to the next runner.

A request that arrives for a job that already started means a redelivery: the job is left alone
if its runner still holds the lease, and ended RUNNER_LOST if nobody does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext

from jobrunner.common import retry, stopping
from jobrunner.common.jobtypes import (
    JobType,
    ParameterError,
    parameters_it_takes,
    validate_parameters,
)
from jobrunner.common.slots import SlotTable, slot_key
from jobrunner.common.subscription import handle_each
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.contracts.names import Names
from jobrunner.services.runner.claim import SlotClaimer
from jobrunner.services.runner.executor import JobExecutor
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.running import LeftForNextRunner, RunningJob
from jobrunner.services.runner.seals import SealWaiter

log = structlog.get_logger()

# A request whose handling met a NATS outage is delivered again after this long (seconds).
REDELIVERY_DELAY = 1.0


class ConnectionClosedForGood(Exception):
    """The runner's connection was closed (by its stop): not the outage a retry outlasts."""


class RequestLoop:
    def __init__(
        self,
        job_types: dict[str, JobType],
        slots: SlotTable,
        journal: JobJournal,
        claimer: SlotClaimer,
        seals: SealWaiter,
        executor: JobExecutor,
        capacity: asyncio.Semaphore,
        give_back_seconds: float,
    ) -> None:
        self.job_types = job_types
        self.slots = slots
        self.journal = journal
        self.claimer = claimer
        self.seals = seals
        self.executor = executor
        self.capacity = capacity
        self.give_back_seconds = give_back_seconds
        self.running: dict[str, RunningJob] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set as the stop begins: a request the last fetch brought in (a fetch under way is
        # never abandoned) is handled after the stopped jobs were told, and is told at once.
        self._stopping = False

    async def run(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        """Take requests until ``stop``; then stop every job (``end_jobs`` waits for their
        ends: the runner's stop gives them what its deadline leaves)."""
        try:
            # A backlog of requests (say of jobs that ended while no runner was up) is taken
            # several at once; a new job's lone request is not held for a fetch of several.
            await handle_each(sub, self.capacity, stop, self._handle, self._tasks)
        finally:
            self._stopping = True
            for job in self.running.values():
                job.stop_for_runner()

    async def end_jobs(self, within: float) -> None:
        """Wait for the stopped jobs' ends, ``within`` seconds at most. A job's ending is
        published until stored: with NATS away the wait had no end, and `jobrunner up` killed
        the runner. One left here ends with the process: its tool with it (the guardian), its
        job RUNNER_LOST once its lease runs out, as after a crash."""
        await stopping.wait_within(
            self._tasks, within, "jobs did not end on the runner's stop: left to end with it"
        )

    async def subscribe_cancels(self, nc: NATS) -> Any:
        return await nc.subscribe(self.journal.names.kind_subjects("cancel"), cb=self._on_cancel)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            event = codec.decode(msg.data)
        except msgspec.MsgspecError:
            return
        # One naming another job than its subject was not written by jobrunner: it cancels nothing.
        if (
            isinstance(event, events.CancelRequested)
            and event.job_id in self.running
            and msg.subject == self.journal.names.subject(event)
        ):
            self.running[event.job_id].cancel(event.requested_by)

    async def _handle(self, msg: Msg) -> None:
        job: RunningJob | None = None
        try:
            event = _request_of(msg, self.journal.names)
            if event is None:
                # Not a request jobrunner wrote: never run, and never delivered again (it would
                # come back every ack wait for ever, holding a place of max_ack_pending).
                await msg.term()
                return
            structlog.contextvars.bind_contextvars(job_id=event.job_id)
            handled = self.running.get(event.job_id)
            if handled is not None:
                # Delivered again while we handle it: never a second handler for one job.
                log.info("request delivered again while handled")
                await handled.redelivered(msg)
                return
            job = RunningJob(event.job_id, msg)
            self.running[event.job_id] = job
            if self._stopping:
                job.stop_for_runner()  # not started: its request goes back to the next runner
            try:
                await self._handle_request(event, job)
            except Exception as exc:
                if job.claiming and not job.acked and retry.is_transient(exc):
                    # Still handled meanwhile: this runner's sweep leaves the job alone. (Only
                    # after a claim began: the many jobs of a batch waiting for its seal as
                    # NATS went away cost no round trips as it comes back.)
                    await self._give_back(event)
                raise
            finally:
                del self.running[event.job_id]
        except Exception as exc:
            if job is not None and not job.acked and retry.is_transient(exc):
                # NATS away or a stream without a leader (an election): the request comes back
                # shortly (to any runner) instead of after the whole ack wait, and finds
                # nothing of this attempt in its way (given back above).
                log.warning("job handling met a NATS outage, request redelivered", error=repr(exc))
                with contextlib.suppress(Exception):
                    await job.msg.nak(delay=REDELIVERY_DELAY)
            else:
                log.exception("job handling crashed")
        finally:
            structlog.contextvars.unbind_contextvars("job_id")
            if job is None or job.holds_capacity:
                self.capacity.release()

    async def _give_back(self, request: events.JobRequested) -> None:
        """Undo a failed attempt's claim, retried while NATS is away; given up after the ack
        wait, when the request is delivered again anyway (a lease left then expires, a record
        left is swept: the job ends RUNNER_LOST, as before this undo), or at once when the
        connection is closed (the runner's stop closed it: no retry can pass)."""
        job_type = self.job_types.get(request.job_type)

        async def undo() -> None:
            try:
                await self.claimer.give_back(request, job_type)
            except ConnectionClosedError as exc:
                raise ConnectionClosedForGood from exc

        try:
            async with asyncio.timeout(self.give_back_seconds):
                await retry.until_done(undo, "the failed claim's undo")
        except Exception as exc:
            log.warning("failed claim not undone", error=repr(exc))

    async def _fail_unstarted(
        self, request: events.JobRequested, job: RunningJob, code: ErrorCode, message: str
    ) -> None:
        """End a job this runner cannot start (its types file decides) as failed, and ack it."""
        await self.journal.end(
            request.job_id,
            JobStatus.FAILED,
            error=ErrorInfo(code=code, message=message),
            job_type=request.job_type,
        )
        await job.ack()

    async def _handle_request(self, request: events.JobRequested, job: RunningJob) -> None:
        job_id = request.job_id
        # At its first delivery no runner has started the job: a status it may have (the API
        # cancelled it while pending) is found by the check made once its slot is held
        # (executor), so the read here is left out, one round trip before the job starts.
        status = None if job.first_delivery else await self.journal.last_status(job_id)
        if status is not None:
            if status.status == JobStatus.RUNNING:
                lease = await self.slots.current(slot_key(request.lock, job_id, request.attempt_of))
                if lease is not None and lease.value.job_id == job_id:
                    # Its runner is alive and holds the lease (our delivery is a duplicate, say
                    # after a lost ack); should that runner die, the expiring lease tells.
                    await job.ack()
                    return
                # Delivered again after it started, and nobody holds it: its runner died
                # (between storing ``running`` and the ack, say, while a cancel was stored).
                await self.journal.end_lost(
                    job_id,
                    await self.journal.cancel_of(job_id),
                    ErrorInfo(
                        code=ErrorCode.RUNNER_LOST,
                        message="The runner running this job stopped; the job did not finish.",
                    ),
                    request.job_type,
                )
                await self.slots.forget_run(job_id)
            elif request.lock:
                await self.slots.dequeue(request.lock, job_id)
                # A reservation a give-back put back after the job ended (``give_back``).
                await self.slots.drop_reservation(slot_key(request.lock, job_id), job_id)
            await job.ack()
            return
        job_type = self.job_types.get(request.job_type)
        if job_type is None:
            await self._fail_unstarted(
                request,
                job,
                ErrorCode.UNKNOWN_JOB_TYPE,
                f"This runner has no job type {request.job_type!r}; check job_types_file.",
            )
            return
        try:
            # The API checked them against its own types file, which may differ from this one.
            validate_parameters(job_type, parameters_it_takes(job_type, request.parameters))
        except ParameterError as exc:
            await self._fail_unstarted(
                request,
                job,
                ErrorCode.INVALID_PARAMETERS,
                f"This runner's job type {request.job_type!r} refuses the job's "
                f"parameters ({exc}); check job_types_file.",
            )
            return

        if request.batch_id is not None and not await self.seals.wait(request, job):
            return  # its batch was never sealed, or it was cancelled while waiting
        # Made while the slot is claimed, off the way to the job's start; for a job on a lock,
        # which may wait hours for its slot (thousands of them queued), once it holds it.
        early = None if request.lock else self.executor.output_directory(job_id)
        try:
            claimed = await self.claimer.claim(request, job_type, job)
        except BaseException:
            if early is not None:
                await self.executor.discard_output(job_id, early)
            raise
        if claimed is None:
            if early is not None:
                await self.executor.discard_output(job_id, early)
            return
        if claimed.seen is None or request.batch_id is not None:
            # The request is acknowledged only once the job started (executor): after its
            # start check, run record, ``running`` and the tool's start. A job that waited (for
            # its slot, capacity or batch's seal) last said "in progress" up to a re-check
            # interval ago, a third of the ack wait: said again here, its start has a whole
            # ack wait before the request comes back to another runner. One whose slot was
            # taken at once at its first delivery (``seen``, outside a batch) did not wait.
            await job.msg.in_progress()
        making_output = early or self.executor.output_directory(job_id)
        try:
            await self.executor.run(request, job_type, job, claimed, making_output)
        except LeftForNextRunner:
            await self._give_back(request)
            await job.leave_for_next_runner()


def _request_of(msg: Msg, names: Names) -> events.JobRequested | None:
    """The JobRequested ``msg`` holds, or None (with a warning) for a message that does not
    decode, an event of another kind or one naming another job than its subject."""
    try:
        event = codec.decode(msg.data)
    except msgspec.MsgspecError as exc:
        log.warning("undecodable request dropped", subject=msg.subject, reason=str(exc))
        return None
    if not isinstance(event, events.JobRequested):
        if event is not None:
            log.warning("not a request, dropped", subject=msg.subject, type=type(event).__name__)
        return None
    if msg.subject != names.subject(event):
        log.warning("request of another job dropped", subject=msg.subject, job_id=event.job_id)
        return None
    return event
