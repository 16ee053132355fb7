"""Running a claimed job: ``running`` published, the execution under its lease, its end.

The request is acknowledged once ``running`` is stored: a redelivery after that can only mean
this runner died, and the job then ends RUNNER_LOST instead of running twice. Cancel, the job
type's timeout and a lost lease stop the execution; its end is published with the job's terminal
event id and the slot released.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS

from jobrunner.common import metrics, retry, stopping, together
from jobrunner.common.jobtypes import JobType, expand_env
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.services.runner import orphans
from jobrunner.services.runner.artifacts import ArtifactCollector, OutputDirectory
from jobrunner.services.runner.bulk import BulkLane
from jobrunner.services.runner.claim import Claimed, StartCheck, is_queued, read_start_check
from jobrunner.services.runner.execution import (
    LEASE_LOST,
    Execution,
    Outcome,
    ProcessGroup,
    StartFailed,
    execution_for,
)
from jobrunner.services.runner.external import ExternalExecution
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.lease import RETRY_PAUSE_SECONDS, LeaseKeeper
from jobrunner.services.runner.priority import ToolPriority
from jobrunner.services.runner.publisher import LinePublisher, PublishPacing
from jobrunner.services.runner.reporting import JobReporter
from jobrunner.services.runner.running import LeftForNextRunner, RunnerIdentity, RunningJob

log = structlog.get_logger()

# How long the drain after a job's end waits for the tool's output to close (``_drain``), and
# how much time waiting for room in the publisher may add to it (NATS away: longer than a lease
# lasts without NATS, after which the lease is lost and nothing is added).
PUMP_DRAIN_SECONDS = 5.0
DRAIN_ROOM_MOST = 60.0

# Refusals of a job's ``running`` by foreign messages stored on its status subject, and reads of
# it cut short by their bounds, before it is stored without its condition (``_publish_running``).
MOST_REFUSALS = 12


def _files_not_kept(outcome: Outcome, code: ErrorCode, files: list[str], what: str) -> Outcome:
    """A completed job failed for output files it left that were not kept as artifacts: the
    first five named (the log names each one)."""
    names = ", ".join(repr(n) for n in files[:5])
    return Outcome(
        JobStatus.FAILED,
        exit_code=outcome.exit_code,
        error=ErrorInfo(
            code=code, message=f"{len(files)} output file(s) {what} ({names}); see the job's log."
        ),
    )


def runner_stopped_error(job_id: str, *, external: bool) -> ErrorInfo:
    """Why a job its runner's own stop interrupted ended: not a cancel, and not a crash."""
    if external:
        what = (
            "The runner holding this external job was stopped (its worker is told so at its "
            "next report)"
        )
    else:
        what = "The runner was stopped while the job ran"
    return ErrorInfo(
        code=ErrorCode.RUNNER_STOPPED,
        message=f"{what}: start it again (POST /api/jobs/{job_id}/restart).",
    )


def output_not_stored() -> ErrorInfo:
    return ErrorInfo(
        code=ErrorCode.OUTPUT_NOT_STORED,
        message="NATS did not store the tool's output in time after it exited (given up on "
        f"{PUMP_DRAIN_SECONDS:g} s after the exit plus {DRAIN_ROOM_MOST:g} s waiting for NATS): "
        "its last lines are missing. Check that NATS is up and not short of storage, then run "
        "the job again.",
    )


class Drained(enum.Enum):
    """How the drain after a tool's exit ended (``JobExecutor._drain``)."""

    CLOSED = "closed"  # the output closed and all of it was handed on
    HELD_OPEN = "held_open"  # given up on while the pump waited on a pipe that did not close
    NOT_STORED = "not_stored"  # given up on while the pump waited for room (NATS not storing)


class JobExecutor:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        slots: SlotTable,
        journal: JobJournal,
        identity: RunnerIdentity,
        ledger: orphans.ToolLedger,
        bulk: BulkLane | None = None,
    ) -> None:
        self.settings = settings
        self.nc = nc  # the publisher sizes batches by the server's max_payload
        self.bulk = bulk  # a fast path for the jobs' large line messages (publisher.BULK_BYTES)
        self.slots = slots
        self.journal = journal
        self.identity = identity
        self.ledger = ledger
        # Shared by the jobs' line publishers: their pace depends on how many run at once.
        self.pacing = PublishPacing()
        self.tool_priority = ToolPriority(settings.tool_nice)

    async def run(
        self,
        request: events.JobRequested,
        job_type: JobType,
        job: RunningJob,
        claimed: Claimed,
        making_output: asyncio.Future[OutputDirectory | None],
    ) -> None:
        """Run the job whose slot is ``claimed``, in the output directory ``making_output``
        makes (see ``output_directory``; removed here, whatever happens)."""
        job_id = request.job_id
        lease = claimed.lease
        # Kept from here until the job's end is stored, however long NATS takes to answer.
        keeper = LeaseKeeper(
            self.slots, lease, self.settings.lease_ttl_seconds, self._cancel_check(job)
        )
        keeper.start()
        # Where the job's status subject ends as this runner wrote it (its ``running``): its end
        # is stored conditionally on it, at no read's cost (see endings.store). Not for a job
        # cancelled since: the end of a cancel that saw it pending may follow this ``running``
        # (when its read of the subject was cut short: endings._store_unread), and
        # endings.store reads for it. (A cancel that read the ``running`` stores no end.)
        running_seq: int | None = None
        try:
            status, cancel, status_last = await self._check(job_id, claimed, keeper)
            starts = status is None and cancel is None and not job.cancel_event.is_set()
            if starts and job.left_for_next_runner:
                # Its runner began to stop before the job started: the job is not ended.
                raise LeftForNextRunner
            if starts and not job_type.external:
                # Stored before the tool starts, never while it runs: a runner that died after
                # the spawn and before ``running`` was stored would leave a request that, sent
                # again, runs the job a second time (a NATS outage makes that window seconds).
                # Stored only if the status subject is as the check read it; else the status
                # stored meanwhile (an ending) is the check's answer.
                running_seq, status = await self._publish_running(request, job, status_last)
        except BaseException:
            await self.discard_output(job_id, making_output)
            await keeper.stop()
            raise
        if running_seq is None and (status is not None or job.cancel_event.is_set() or cancel):
            await self.discard_output(job_id, making_output)
            await self._not_started(request, job_type, job, keeper, status)
            return
        output: OutputDirectory | None = None
        try:
            if job_type.external:
                # An external job becomes running with its worker's first report (the API
                # publishes it, once the record above says this runner holds the slot).
                await job.ack()
            # Left only now: a start that failed gave the slot back to the queue's head.
            await self._leave_queue(request, job_type, keeper)
            started = asyncio.get_running_loop().time()
            publisher = LinePublisher.for_job(
                self.nc, self.journal.names, job_id, self.settings, self.pacing, self.bulk
            )
            publisher.start()
            masks = [expand_env(v) for v in job_type.mask]
            reporter = JobReporter(publisher, job_type, masks)
            output = await making_output
            try:
                outcome = await self._execute(request, job_type, job, reporter, keeper, output)
                if output is not None:
                    outcome = await self._store_artifacts(job_id, output, outcome, reporter, keeper)
            finally:
                if output is not None:
                    await output.remove()
            # The tool's ledger record goes in a thread: unlinking a file written moments ago
            # blocked the event loop for 1-4 ms on this ext4 (0.1 ms of it CPU).
            removing = asyncio.ensure_future(asyncio.to_thread(self.ledger.remove, job_id))
            # What the tool printed while NATS was away is published now, before its end.
            await publisher.close()
            await removing
            # Should another runner have declared the job lost first (its lease expired), the
            # shared terminal event id keeps that ending.
            if not outcome.stored:
                await self.journal.end(
                    job_id,
                    outcome.status,
                    exit_code=outcome.exit_code,
                    error=outcome.error,
                    cancelled_by=outcome.cancelled_by,
                    result=reporter.result or None,
                    job_type=request.job_type,
                    after=None if job.cancel_event.is_set() else running_seq,
                )
        finally:
            # Still due if the tool never started (or the keeper stopped before its rewrite).
            await self._send_due_ack(job)
            if output is None:
                # The job never got as far as its tool: nothing of its directory is left.
                await self.discard_output(job_id, making_output)
            lease = await keeper.stop()
        # Frees the slot only if it still holds our lease (also after a lost lease that the server
        # had not yet let expire, renewed by an attempt the keeper abandoned: see release). The
        # ended job's record goes in the same round trip, before it; should it not get through,
        # the sweep removes the record of the ended job.
        await self.slots.end_run(job_id, lease, RETRY_PAUSE_SECONDS)
        log.info(
            "job finished",
            job_type=request.job_type,
            status=str(outcome.status),
            exit_code=outcome.exit_code,
            error_code=outcome.error.code if outcome.error else None,
            lines=publisher.published_lines,
            seconds=round(asyncio.get_running_loop().time() - started, 3),
        )

    async def _check(self, job_id: str, claimed: Claimed, keeper: LeaseKeeper) -> StartCheck:
        """The job's last status and cancel, read while we hold the slot (unless the claim read
        them), with its run record written, if the claim did not write it.

        The record is written before the job starts: should this runner die, the sweep of every
        runner finds the job by it, whether or not anyone saw its lease expire. Written while
        the checks are read (one round trip of waiting, not two): a job that must not start
        after all has it removed again, or kept for the sweep (see _not_started). Neither is
        left running when the other fails: a record's write that went on (it retries, and a
        cancel can be swallowed) could store the record again after the slot was given back, a
        record without a lease, which the sweep takes for a lost job."""
        reading = self._start_check(job_id, claimed)
        if claimed.recorded:
            return await reading
        seen, _ = await together.both(
            reading,
            self._retry(
                "record the running job",
                keeper,
                lambda: self.slots.record_run(
                    self.identity.run_record(job_id, claimed.lease.key),
                    timeout=keeper.request_timeout,
                ),
            ),
        )
        return seen

    async def _start_check(self, job_id: str, claimed: Claimed) -> StartCheck:
        """The claim's start check, or one read now, while we hold the slot."""
        if claimed.seen is not None:
            return claimed.seen
        return await read_start_check(self.journal, job_id)

    async def _publish_running(
        self, request: events.JobRequested, job: RunningJob, status_last: int | None
    ) -> tuple[int | None, events.AnyEvent | None]:
        """``running`` stored, then the request acknowledged: a redelivery after that can only
        mean this runner died, and the job then ends RUNNER_LOST instead of running twice. The
        ack itself goes out with the lease's rewrite once the tool started (``_record_group``),
        or, where there is none, once the start is over (``run``). Its stream sequence, or None
        and the status stored since the check read the subject at ``status_last``.

        Stored only if the status subject still ends at ``status_last``: the API's cancel of
        the job it saw pending may have stored its ending since, and a ``running`` after it
        would have the tool run (its cancel missed while the runner's watch was cut off) and
        its end stored as a second ending. Refused, the subject is read forwards from its start
        for the job's first status, as ``endings.store`` reads it for an ending: this
        ``running`` itself (stored by a try whose ack was lost, and tried again past the
        duplicate window) → go on; any other status (the cancel's ending) → the start stops.
        Forwards, not back from the newest message: foreign messages after the ending cannot
        hide it from a read that starts before them. No status, and the read got to the
        subject's end: tried again on the last message it read. A read cut short (a NATS pause
        or a slow server past ``lastevent.LOOKBACK_SECONDS``, more foreign messages than
        ``LOOKBACK_MOST`` before the first status) does not know there is none: read again.
        After ``MOST_REFUSALS`` refusals and cut-short reads (a check that found only foreign
        messages counts as one), stored without the condition, as before it existed (a flood
        must not stop the job for good): the one case where ``running`` may follow the job's
        ending."""
        running = events.StatusChanged(
            job_id=job.job_id, status=JobStatus.RUNNING, runner_id=self.identity.runner_id
        )
        # A check that found only foreign messages may have been cut short before a status
        # behind them (a NATS pause, a flood): it is read forwards before anything is stored.
        seq = None if status_last is None else await self.journal.stored_after(running, status_last)
        refusals = 0
        while seq is None:
            refusals += 1
            # Retried as the publish is: our ``running`` may be stored, and a job given back
            # now would find it at its redelivery and end RUNNER_LOST without having run.
            first = await retry.until_done(
                lambda: self.journal.first_status(job.job_id), f"the status of {job.job_id}"
            )
            if first.found is not None:
                found_seq, status = first.found
                if status.event_id == running.event_id:
                    seq = found_seq
                else:
                    log.info("job not started: a status stored since its check", seq=found_seq)
                    return None, status
            elif refusals >= MOST_REFUSALS:
                log.warning(
                    "running stored without its condition",
                    refusals=refusals,
                    read_complete=first.complete,
                )
                seq = await self.journal.stored_at(running)
            elif first.complete:
                seq = await self.journal.stored_after(running, first.last)
            # Else the read was cut short: whether the subject holds a status is not known.
        metrics.job_started(request.job_type)
        job.ack_after()
        return seq, None

    @staticmethod
    async def _send_due_ack(job: RunningJob) -> None:
        try:
            await job.send_due_ack()
        except Exception as exc:  # NATS closed: the request comes back, and finds the job's end
            log.warning("request ack not sent", error=repr(exc))

    async def _leave_queue(
        self, request: events.JobRequested, job_type: JobType, keeper: LeaseKeeper
    ) -> None:
        """Take a queued job's entry out of its lock's queue (it started, or never will)."""
        lock = request.lock
        if lock and is_queued(request, job_type):
            await self._retry(
                "leave the queue", keeper, lambda: self.slots.dequeue(lock, request.job_id)
            )

    async def _not_started(
        self,
        request: events.JobRequested,
        job_type: JobType,
        job: RunningJob,
        keeper: LeaseKeeper,
        status: events.AnyEvent | None,
    ) -> None:
        """The job found started, ended or cancelled once its slot is held: it does not start
        (here), and leaves its lock's queue."""
        job_id = request.job_id
        await self._leave_queue(request, job_type, keeper)
        if status is None:
            # Cancelled while we were taking the slot: it never starts.
            await self.journal.end(
                job_id,
                JobStatus.CANCELLED,
                cancelled_by=job.cancelled_by,
                job_type=request.job_type,
            )
        # Another runner got this request too (a redelivery) and started or ended it first;
        # checked while we hold the slot, so the job never runs twice. Our record took the
        # place of its record: one of a job still running (its runner lost the slot we hold)
        # is kept, so the sweep ends that job; any other is removed.
        if not (isinstance(status, events.StatusChanged) and status.status == JobStatus.RUNNING):
            await self._retry("forget the job", keeper, lambda: self.slots.forget_run(job_id))
        await self.slots.release(await keeper.stop())
        await job.ack()

    def output_directory(self, job_id: str) -> asyncio.Future[OutputDirectory | None]:
        """Start making a job's output directory (None if it cannot be made), and the file of
        its tool's ledger record: in a thread, so a slow disk does not hold the event loop, and
        while the job's slot is claimed, so its start does not wait for them (a thread made to
        wait for the interpreter lock behind the spawn's own work took milliseconds). One
        thread call for both: each call's hand-over and wake-up of the loop cost about 0.07 ms
        of the loop's CPU, on every job's way to its start."""

        def make() -> OutputDirectory | None:
            try:
                return OutputDirectory.create(self.settings, job_id)
            except OSError as exc:
                log.error("output directory not made", error=repr(exc))
                return None
            finally:
                self.ledger.prepare(job_id)

        return asyncio.ensure_future(asyncio.to_thread(make))

    async def discard_output(
        self, job_id: str, making: asyncio.Future[OutputDirectory | None]
    ) -> None:
        """Remove the output directory (and the ledger's file) of a job that did not start."""
        made = await making
        self.ledger.discard(job_id)
        if made is not None:
            await made.remove()

    async def _store_artifacts(
        self,
        job_id: str,
        output: OutputDirectory,
        outcome: Outcome,
        reporter: JobReporter,
        keeper: LeaseKeeper,
    ) -> Outcome:
        """Store what the job left in its output directory (before its end is published: a
        client that sees the job ended finds its artifacts); the outcome, changed when a file
        was too large for a job that would otherwise have completed."""
        if keeper.lost.is_set():
            # The slot may be someone else's by now: this runner publishes nothing more of
            # the job but its end.
            return outcome

        def say(text: str) -> None:
            reporter.line("stderr", f"jobrunner: {text}", datetime.now(UTC), level="ERROR")

        collector = ArtifactCollector(
            self.journal.js,
            self.journal.names,
            self.settings,
            job_id,
            say,
            self.journal.publish,
            keeper.lost.is_set,
        )
        result = await collector.collect(output)
        if outcome.status != JobStatus.COMPLETED:
            return outcome
        if result.stopped:
            return Outcome(JobStatus.FAILED, exit_code=outcome.exit_code, error=LEASE_LOST)
        if result.not_stored:
            return _files_not_kept(
                outcome, ErrorCode.ARTIFACT_NOT_STORED, result.not_stored, "could not be stored"
            )
        if result.too_large:
            return _files_not_kept(
                outcome,
                ErrorCode.ARTIFACT_TOO_LARGE,
                result.too_large,
                "were over the artifact size limits and not stored",
            )
        return outcome

    @staticmethod
    async def _retry(what: str, keeper: LeaseKeeper, write: Callable[[], Awaitable[None]]) -> None:
        """A write to the lock bucket, retried while the lease lasts (NATS may be away), or
        until the task is cancelled: at the exit the keeper is cancelled too, so its ``lost``
        never comes, and a cancel nats-py swallowed would leave this retrying for ever."""
        while True:
            try:
                await write()
                return
            except Exception as exc:
                if keeper.lost.is_set():
                    log.warning("lock bucket write failed", write=what, error=repr(exc))
                    return
                stopping.raise_if_being_cancelled()
                log.warning("lock bucket write failed, retrying", write=what, error=repr(exc))
                await asyncio.sleep(RETRY_PAUSE_SECONDS)

    def _cancel_check(self, job: RunningJob) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            if not job.cancel_event.is_set():
                # A cancel sent while we were cut off from NATS is still in the stream.
                cancel = await self.journal.cancel_of(job.job_id)
                if cancel is not None:
                    job.cancel(cancel.requested_by)

        return check

    async def _execute(
        self,
        request: events.JobRequested,
        job_type: JobType,
        job: RunningJob,
        reporter: JobReporter,
        keeper: LeaseKeeper,
        output: OutputDirectory | None,
    ) -> Outcome:
        execution: Execution
        if job_type.external:
            execution = ExternalExecution(self.nc, self.journal, request, job_type)
        elif output is None:
            return Outcome(
                JobStatus.FAILED,
                error=ErrorInfo(
                    code=ErrorCode.SPAWN_FAILED,
                    message="The runner could not make the job's output directory "
                    "(artifact_work_dir full or not writable).",
                ),
            )
        else:
            execution = execution_for(
                request, job_type, self.settings, output.path, self.tool_priority
            )
        if job.cancel_event.is_set():
            # Cancelled between the claim and now: never start it.
            return Outcome(JobStatus.CANCELLED, cancelled_by=job.cancelled_by)
        if job.runner_stopping.is_set():
            # Its runner began to stop after ``running`` was stored: never start the tool.
            return Outcome(
                JobStatus.FAILED, error=runner_stopped_error(job.job_id, external=job_type.external)
            )
        if not await keeper.confirm():
            # The lease could not be confirmed in time: the slot may be someone else's.
            return Outcome(JobStatus.FAILED, error=LEASE_LOST)
        # The tool dies by the lease's deadline even should the runner stall (guardian.py): the
        # first deadline goes to the guardian with the tool's group, in the start's one write.
        keeper.hold(execution.hold_until)
        try:
            await execution.start()
        except StartFailed as exc:
            return Outcome(
                JobStatus.FAILED, error=ErrorInfo(code=ErrorCode.SPAWN_FAILED, message=str(exc))
            )
        group = execution.process_group
        if group is None:
            await self._send_due_ack(job)  # a callable: no lease rewrite to send it with
        else:
            self._record_group(request.job_id, group, keeper, job)
        pump = asyncio.create_task(execution.pump(reporter))
        waiter = asyncio.create_task(execution.wait())
        cancel = asyncio.create_task(job.cancel_event.wait())
        runner_stop = asyncio.create_task(job.runner_stopping.wait())
        lost = asyncio.create_task(keeper.lost.wait())
        done, _ = await asyncio.wait(
            {waiter, cancel, runner_stop, lost},
            timeout=job_type.timeout_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if waiter in done:
            outcome = execution.outcome(waiter.result())
        elif lost in done:
            # The tool must be gone before the server could give the slot to another runner:
            # the keeper gave the lease up a safety margin early, the grace takes half of it.
            await execution.stop(keeper.stop_grace(job_type.cancel_grace_seconds))
            exit_code = execution.reported_exit_code(await waiter)
            outcome = Outcome(JobStatus.FAILED, exit_code=exit_code, error=LEASE_LOST)
            log.warning("job stopped: lease lost", job_type=request.job_type)
        else:
            await execution.stop(job_type.cancel_grace_seconds)
            exit_code = execution.reported_exit_code(await waiter)
            # Read from what ended the wait, not from the events after the grace: a job the
            # timeout stopped stays timed out when a cancel comes during its grace.
            outcome = self._stopped(
                job,
                job_type,
                exit_code,
                cancelled=cancel in done,
                runner_stopped=runner_stop in done,
            )
        for task in (cancel, runner_stop, lost):
            task.cancel()
        drained = await self._drain(pump, reporter.publisher, keeper)
        completed = outcome.status == JobStatus.COMPLETED
        if drained is Drained.CLOSED:
            pass
        elif keeper.lost.is_set():
            # Output still unread when the slot may have become another runner's: the job ends
            # as one whose lease was lost, not as complete.
            log.warning("output given up on: lease lost", job_type=request.job_type)
            if completed:
                outcome = Outcome(JobStatus.FAILED, exit_code=outcome.exit_code, error=LEASE_LOST)
        elif drained is Drained.NOT_STORED:
            # The lease still held (a long TTL, or NATS renewing it but not storing lines): the
            # output was given up on for want of room, so lines are missing: never completed.
            log.warning("output given up on: not stored in time", job_type=request.job_type)
            if completed:
                outcome = Outcome(
                    JobStatus.FAILED, exit_code=outcome.exit_code, error=output_not_stored()
                )
        else:
            # Someone outside the process group still holds the tool's output open.
            log.warning("output did not close after the tool ended")
        return outcome

    @staticmethod
    async def _drain(
        pump: asyncio.Task[None], publisher: LinePublisher, keeper: LeaseKeeper
    ) -> Drained:
        """Wait for the pump to hand on what is left of the job's output once the job ended, or
        give it up (cancel it) after PUMP_DRAIN_SECONDS (someone outside the process group holds
        a pipe open, a daemon printing on, say). Time the pump waits for room in the publisher
        (NATS away) is added, up to DRAIN_ROOM_MOST: those lines are not lost, only late; not
        once the lease is lost (the slot may be another runner's). Given up on while the pump
        waits for room: NOT_STORED (lines are missing), else HELD_OPEN."""
        began = time.monotonic()
        waited_before = publisher.room_waited()
        lost = asyncio.ensure_future(keeper.lost.wait())
        try:
            while not pump.done():
                given_up = keeper.lost.is_set()  # then nothing is added to the bound
                waited = publisher.room_waited() - waited_before
                extra = 0.0 if given_up else min(waited, DRAIN_ROOM_MOST)
                remaining = began + PUMP_DRAIN_SECONDS + extra - time.monotonic()
                if remaining <= 0:
                    # (The flag stays up until the waiting reader runs again, room come or not.)
                    not_stored = publisher.waiting_for_room
                    pump.cancel()
                    return Drained.NOT_STORED if not_stored else Drained.HELD_OPEN
                wakes: set[asyncio.Future[Any]] = {pump} if lost.done() else {pump, lost}
                if not given_up and extra < DRAIN_ROOM_MOST and publisher.waiting_for_room:
                    # The bound stands still while the pump waits for room: woken when room
                    # comes (or the most that may be added is reached), not by the clock.
                    room = asyncio.ensure_future(publisher.room_came())
                    try:
                        await asyncio.wait(
                            wakes | {room},
                            timeout=DRAIN_ROOM_MOST - extra,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    finally:
                        room.cancel()
                else:
                    # (FIRST_COMPLETED: the default waits for the lease to be lost too, that
                    # is for the whole bound: every job's end came 5 s late, session 18.)
                    await asyncio.wait(
                        wakes, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
        finally:
            lost.cancel()
        pump.result()  # (a pump that failed raises here)
        return Drained.CLOSED

    @staticmethod
    def _stopped(
        job: RunningJob,
        job_type: JobType,
        exit_code: int | None,
        *,
        cancelled: bool,
        runner_stopped: bool,
    ) -> Outcome:
        """The end of a job stopped by a cancel, its runner's stop or (neither) its timeout,
        whichever stopped it first; a cancel wins over a runner's stop that came with it."""
        if cancelled:
            return Outcome(JobStatus.CANCELLED, exit_code=exit_code, cancelled_by=job.cancelled_by)
        if runner_stopped:
            return Outcome(
                JobStatus.FAILED,
                exit_code=exit_code,
                error=runner_stopped_error(job.job_id, external=job_type.external),
            )
        return Outcome(
            JobStatus.FAILED,
            exit_code=exit_code,
            error=ErrorInfo(
                code=ErrorCode.PROCESSING_TIMEOUT,
                message=f"The job ran longer than its timeout of "
                f"{job_type.timeout_seconds:g} s and was stopped.",
            ),
        )

    def _record_group(
        self, job_id: str, group: ProcessGroup, keeper: LeaseKeeper, job: RunningJob
    ) -> None:
        """Write down what finds the tool's process group should this runner die; the request's
        ack goes out in the same socket write as the lease's rewrite."""
        self.ledger.record(
            orphans.ToolRecord(
                job_id=job_id,
                pgid=group.pgid,
                started=group.started,
                boot_id=self.identity.boot_id,
                runner_pid=self.identity.pid,
                runner_started=self.identity.started_ticks,
            )
        )
        keeper.rewrite(
            msgspec.structs.replace(
                keeper.lease.value, pid=group.pgid, pgid=group.pgid, started=group.started
            ),
            along=job.send_due_ack,
        )
