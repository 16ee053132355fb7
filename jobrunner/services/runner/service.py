"""The runner service: takes JobRequested from a shared durable consumer, claims the job's slot,
runs it and publishes what happens. Any number of runners can share one NATS.

A job's life in a runner:

1. fetched from the durable consumer (a runner fetches only while it has capacity);
2. its slot claimed: a lease in the lock bucket. A busy slot is waited for without holding
   capacity; for a ``queue`` type only the head of the lock's queue may take it;
3. ``running`` published, then the request acknowledged: a request delivered again after that
   means its runner died, and the job ends RUNNER_LOST instead of running twice;
4. the tool (or internal callable) runs while the lease is renewed; cancel, timeout and a lost
   lease stop it; its end is published with the terminal event id and the slot released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from jobrunner.common import eventstore
from jobrunner.common.jobtypes import JobType, build_argv, expand_env, load_job_types
from jobrunner.common.settings import Settings
from jobrunner.common.slots import Lease, QueueEntry, SlotTable, SlotValue, hostname, slot_key
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.contracts.names import Names
from jobrunner.services.runner import orphans
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.internal import CallableFailed, InternalCall
from jobrunner.services.runner.process import SpawnError, ToolProcess
from jobrunner.services.runner.publisher import LinePublisher, publish_with_retry
from jobrunner.services.runner.reporting import JobReporter

log = structlog.get_logger()

# A queue entry whose JobRequested never reached the stream (its API died in between) is
# dropped after this long.
ORPHANED_QUEUE_ENTRY_SECONDS = 30.0
PUMP_DRAIN_SECONDS = 5.0
# How long the lease renewer may take to notice it should stop (it may be inside a NATS call).
RENEWER_STOP_SECONDS = 10.0


class RunningJob:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.cancelled_by: str | None = None
        self.cancel_event = asyncio.Event()
        self.lease_lost = asyncio.Event()
        self.holds_capacity = True


class Runner:
    def __init__(self, settings: Settings, nc: NATS) -> None:
        self.settings = settings
        self.names = Names(settings.prefix)
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.runner_id = settings.runner_id or f"{hostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.job_types = load_job_types(settings.job_types_file)
        self.slots = SlotTable(self.js, self.names, settings.lease_ttl_seconds)
        self.board = LockBoard()
        self.ledger = orphans.ToolLedger(Path(settings.state_dir) / "runner-tools")
        self.host = hostname()
        self.boot_id = orphans.boot_id()
        self.pid = os.getpid()
        self.started_ticks = orphans.start_ticks(self.pid)
        # Unacknowledged requests (jobs waiting for a slot) come back to another runner this long
        # after their runner stopped saying "in progress".
        self.ack_wait = max(2.0, 2 * settings.lease_ttl_seconds)
        self.running: dict[str, RunningJob] = {}
        self.capacity = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        await eventstore.ensure_topology(self.js, self.names, self.settings)
        watcher = asyncio.create_task(
            self.board.watch(await self.slots.kv(), stop, self._on_lease_expired)
        )
        cancel_sub = await self.nc.subscribe(self.names.kind_subjects("cancel"), cb=self._on_cancel)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.board.ready.wait(), 10.0)
            await self._clean_up_after_crash()
            sub = await self.js.pull_subscribe(
                self.names.kind_subjects("requested"),
                durable=self.names.runner_consumer,
                stream=self.names.stream,
                config=api.ConsumerConfig(
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait,
                    max_ack_pending=10_000,
                    max_deliver=-1,
                ),
            )
            log.info("runner started", runner_id=self.runner_id, job_types=list(self.job_types))
            while not stop.is_set():
                await self.capacity.acquire()
                try:
                    msgs = await sub.fetch(1, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    self.capacity.release()
                    continue
                except Exception as exc:
                    self.capacity.release()
                    log.warning("fetch failed", error=repr(exc))
                    await asyncio.sleep(0.5)
                    continue
                task = asyncio.create_task(self._handle(msgs[0]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            await cancel_sub.unsubscribe()
            for job in self.running.values():
                job.cancelled_by = job.cancelled_by or "runner shutdown"
                job.cancel_event.set()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            watcher.cancel()
            await asyncio.wait({watcher}, timeout=RENEWER_STOP_SECONDS)

    async def _clean_up_after_crash(self) -> None:
        """Before taking work: end what a dead runner on this host left behind."""
        lost = ErrorInfo(
            code=ErrorCode.RUNNER_LOST,
            message="The runner running this job stopped; a runner starting on its host "
            "ended the job's processes.",
        )
        for job_id in self.ledger.end_orphans():
            log.warning("orphaned tool ended at start", orphan_job_id=job_id)
            # Its lease may have expired while no runner was watching: end the job here.
            status = await self._last_event(job_id, "status")
            if isinstance(status, events.StatusChanged) and status.status == JobStatus.RUNNING:
                await self._end(job_id, JobStatus.FAILED, error=lost)
        for key, value in list(self.board.slots.items()):
            if value.phase != "held" or not self._is_dead_local_runner(value):
                continue
            if value.pgid:
                orphans.kill_group(value.pgid, value.started, value.boot_id)
            lease = await self.slots.current(key)
            if lease is None or lease.value.job_id != value.job_id:
                continue
            await self._end(value.job_id, JobStatus.FAILED, error=lost)
            await self.slots.release(lease)

    def _is_dead_local_runner(self, value: SlotValue) -> bool:
        return (
            value.host == self.host
            and value.boot_id == self.boot_id
            and value.runner_pid is not None
            and value.runner_pid != self.pid
            and not orphans.process_alive(value.runner_pid, value.runner_started)
        )

    # --- one job
    async def _handle(self, msg: Msg) -> None:
        job: RunningJob | None = None
        try:
            event = codec.decode(msg.data)
            if not isinstance(event, events.JobRequested):
                await msg.term()
                return
            structlog.contextvars.bind_contextvars(job_id=event.job_id)
            job = RunningJob(event.job_id)
            await self._handle_request(msg, event, job)
        except Exception:
            log.exception("job handling crashed")
        finally:
            structlog.contextvars.unbind_contextvars("job_id")
            if job is None or job.holds_capacity:
                self.capacity.release()

    async def _last_event(self, job_id: str, kind: str) -> events.AnyEvent | None:
        try:
            raw = await self.js.get_last_msg(
                self.names.stream, self.names.job_kind_subject(job_id, kind)
            )
        except NotFoundError:
            return None
        return codec.decode(raw.data) if raw.data else None

    async def _publish(self, event: events.Event) -> None:
        await publish_with_retry(self.js, self.names, event)

    async def _end(
        self,
        job_id: str,
        status: JobStatus,
        *,
        exit_code: int | None = None,
        error: ErrorInfo | None = None,
        cancelled_by: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        await self._publish(
            events.StatusChanged(
                job_id=job_id,
                event_id=events.terminal_event_id(job_id),
                status=status,
                exit_code=exit_code,
                error=error,
                runner_id=self.runner_id,
                cancelled_by=cancelled_by,
                result=result,
            )
        )

    async def _handle_request(
        self, msg: Msg, request: events.JobRequested, job: RunningJob
    ) -> None:
        job_id = request.job_id
        status = await self._last_event(job_id, "status")
        if isinstance(status, events.StatusChanged):
            if status.status == JobStatus.RUNNING:
                lease = await self.slots.current(slot_key(request.lock, job_id))
                if lease is not None and lease.value.job_id == job_id:
                    # Its runner is alive and holds the lease (our delivery is a duplicate, say
                    # after a lost ack); should that runner die, the expiring lease tells.
                    await msg.ack()
                    return
                # Delivered again after it started, and nobody holds it: its runner died.
                await self._end(
                    job_id,
                    JobStatus.FAILED,
                    error=ErrorInfo(
                        code=ErrorCode.RUNNER_LOST,
                        message="The runner running this job stopped; the job did not finish.",
                    ),
                )
            elif request.lock:
                await self.slots.dequeue(request.lock, job_id)
            await msg.ack()
            return
        job_type = self.job_types.get(request.job_type)
        if job_type is None:
            await self._end(
                job_id,
                JobStatus.FAILED,
                error=ErrorInfo(
                    code="UNKNOWN_JOB_TYPE",
                    message=f"This runner has no job type {request.job_type!r}; "
                    "check job_types_file.",
                ),
            )
            await msg.ack()
            return

        self.running[job_id] = job
        try:
            lease = await self._claim_slot(msg, request, job_type, job)
            if lease is None:
                return
            await self._run_claimed(msg, request, job_type, job, lease)
        finally:
            self.running.pop(job_id, None)

    # --- the slot
    async def _claim_slot(
        self, msg: Msg, request: events.JobRequested, job_type: JobType, job: RunningJob
    ) -> Lease | None:
        job_id = request.job_id
        key = slot_key(request.lock, job_id)
        queued = bool(request.lock) and job_type.on_busy == "queue"
        value = SlotValue(
            job_id=job_id,
            phase="held",
            job_type=request.job_type,
            runner_id=self.runner_id,
            host=self.host,
            boot_id=self.boot_id,
            runner_pid=self.pid,
            runner_started=self.started_ticks,
        )
        while True:
            if job.cancel_event.is_set() or await self._last_event(job_id, "cancel"):
                await self._end(job_id, JobStatus.CANCELLED, cancelled_by=job.cancelled_by)
                if request.lock:
                    await self.slots.dequeue(request.lock, job_id)
                await msg.ack()
                return None
            may_take = not queued or await self._is_queue_head(request, key)
            if may_take and (job.holds_capacity or await self._take_capacity(job)):
                lease = await self.slots.try_acquire(key, value)
                if lease is not None:
                    if queued and request.lock:
                        await self.slots.dequeue(request.lock, job_id)
                    return lease
            if job.holds_capacity:
                # Waiting for a slot takes no capacity: other jobs may run meanwhile.
                self.capacity.release()
                job.holds_capacity = False
            await msg.in_progress()
            waits = [
                asyncio.ensure_future(self.board.wait_change(key, self.ack_wait / 3)),
                asyncio.ensure_future(job.cancel_event.wait()),
            ]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()

    async def _take_capacity(self, job: RunningJob) -> bool:
        try:
            await asyncio.wait_for(self.capacity.acquire(), self.ack_wait / 3)
        except TimeoutError:
            return False
        job.holds_capacity = True
        return True

    async def _is_queue_head(self, request: events.JobRequested, key: str) -> bool:
        """Is this job first in its lock's queue? Drops a head that will never come."""
        assert request.lock
        if not self.board.ready.is_set():
            return False
        if not self.board.queued(key, request.job_id):
            # Not (yet) seen by our watcher; put it there if nobody did (idempotent).
            await self.slots.enqueue(request.lock, request.job_id, request.job_type)
            return False
        head = self.board.head(key)
        if head is None or head.job_id == request.job_id:
            return True
        if await self._queue_entry_is_dead(head):
            log.info("dropping a dead queue entry", dead_job_id=head.job_id)
            await self.slots.dequeue(request.lock, head.job_id)
        return False

    async def _queue_entry_is_dead(self, entry: QueueEntry) -> bool:
        status = await self._last_event(entry.job_id, "status")
        if isinstance(status, events.StatusChanged) and status.status != JobStatus.PENDING:
            return True  # started or ended: it should have left the queue
        if time.time() - entry.queued_at < ORPHANED_QUEUE_ENTRY_SECONDS:
            return False
        return await self._last_event(entry.job_id, "requested") is None

    # --- running
    async def _run_claimed(
        self,
        msg: Msg,
        request: events.JobRequested,
        job_type: JobType,
        job: RunningJob,
        lease: Lease,
    ) -> None:
        job_id = request.job_id
        if await self._last_event(job_id, "status") is not None:
            # Another runner got this request too (a redelivery) and started or ended it first;
            # checked while we hold the slot, so the job never runs twice.
            await self.slots.release(lease)
            await msg.ack()
            return
        if job.cancel_event.is_set() or await self._last_event(job_id, "cancel"):
            # Cancelled while we were taking the slot: it never starts.
            await self._end(job_id, JobStatus.CANCELLED, cancelled_by=job.cancelled_by)
            await self.slots.release(lease)
            await msg.ack()
            return
        await self._publish(
            events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING, runner_id=self.runner_id)
        )
        # Acknowledged once running: a redelivery after this point can only mean we died, and
        # then the job ends as RUNNER_LOST instead of running twice.
        await msg.ack()
        started = asyncio.get_running_loop().time()
        publisher = LinePublisher(self.js, self.names, job_id, self.settings.line_batch_max)
        publisher.start()
        masks = [expand_env(v) for v in job_type.mask]
        reporter = JobReporter(publisher, job_type, masks)
        outcome = await self._execute(request, job_type, job, reporter, lease)
        await publisher.close()
        self.ledger.remove(job_id)
        lease = outcome.pop("lease")
        if job.lease_lost.is_set():
            # The slot is no longer ours, so the tool was stopped. Say so; should another runner
            # have declared the job lost first, the shared terminal event id keeps that ending.
            await self._end(
                job_id,
                JobStatus.FAILED,
                exit_code=outcome.get("exit_code"),
                error=ErrorInfo(
                    code=ErrorCode.LEASE_LOST,
                    message="The runner could not renew the job's slot lease in time (NATS "
                    "unreachable or the runner stalled); the job was stopped so that it never "
                    "runs beside another.",
                ),
            )
            log.warning("job stopped: lease lost", job_type=request.job_type)
            return
        await self._end(job_id, **outcome, result=reporter.result or None)
        await self.slots.release(lease)
        error = outcome.get("error")
        log.info(
            "job finished",
            job_type=request.job_type,
            status=str(outcome["status"]),
            exit_code=outcome.get("exit_code"),
            error_code=error.code if error else None,
            lines=publisher.published_lines,
            seconds=round(asyncio.get_running_loop().time() - started, 3),
        )

    def _execution(
        self, request: events.JobRequested, job_type: JobType
    ) -> ToolProcess | InternalCall:
        own_env = {"JOBRUNNER_DEMO_PACE": str(self.settings.demo_pace)}
        own_env.update({k: expand_env(v) for k, v in job_type.env.items()})
        if job_type.callable:
            return InternalCall(job_type.callable, request.job_id, request.parameters, own_env)
        # The runner's own settings (NATS and database URLs with their passwords) are not the
        # tool's business: everything else of the runner's environment is passed on.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
        env = {**inherited, "PYTHONUNBUFFERED": "1", **own_env}
        cwd = expand_env(job_type.cwd) if job_type.cwd else None
        return ToolProcess(build_argv(job_type, request.parameters), cwd, env)

    async def _execute(
        self,
        request: events.JobRequested,
        job_type: JobType,
        job: RunningJob,
        reporter: JobReporter,
        lease: Lease,
    ) -> dict[str, Any]:
        execution = self._execution(request, job_type)
        if job.cancel_event.is_set():
            # Cancelled between the claim and now: never start it.
            return {"status": JobStatus.CANCELLED, "cancelled_by": job.cancelled_by, "lease": lease}
        try:
            await execution.start()
        except (SpawnError, CallableFailed) as exc:
            return {
                "status": JobStatus.FAILED,
                "lease": lease,
                "error": ErrorInfo(code=ErrorCode.SPAWN_FAILED, message=str(exc)),
            }
        pump: asyncio.Task[None]
        if isinstance(execution, ToolProcess):
            lease = await self._record_tool(request.job_id, execution, lease)

            def sink(stream: str, text: str, transient: bool, at: Any) -> None:
                reporter.line(stream, text, at, transient=transient)

            pump = asyncio.create_task(
                execution.pump(sink, reporter.room, self.settings.max_line_bytes)
            )
        else:
            pump = asyncio.create_task(execution.pump(reporter))
        holder = {"lease": lease}
        stop_renewing = asyncio.Event()
        renewer = asyncio.create_task(self._keep_lease(holder, job, stop_renewing))
        waiter = asyncio.create_task(execution.wait())
        cancel = asyncio.create_task(job.cancel_event.wait())
        lost = asyncio.create_task(job.lease_lost.wait())
        done, _ = await asyncio.wait(
            {waiter, cancel, lost},
            timeout=job_type.timeout_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
        outcome: dict[str, Any]
        if waiter in done:
            exit_code = waiter.result()
            if isinstance(execution, ToolProcess):
                execution.signal_group(9)  # nothing of the tool outlives it
            outcome = self._exit_outcome(execution, exit_code)
        else:
            await execution.stop(job_type.cancel_grace_seconds)
            exit_code = await waiter
            if cancel in done:
                outcome = {"status": JobStatus.CANCELLED, "cancelled_by": job.cancelled_by}
            elif lost in done:
                outcome = {"status": JobStatus.FAILED}
            else:
                outcome = {
                    "status": JobStatus.FAILED,
                    "error": ErrorInfo(
                        code=ErrorCode.PROCESSING_TIMEOUT,
                        message=f"The job ran longer than its timeout of "
                        f"{job_type.timeout_seconds:g} s and was stopped.",
                    ),
                }
            if isinstance(execution, ToolProcess):
                outcome["exit_code"] = exit_code
        for task in (cancel, lost):
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(pump), timeout=PUMP_DRAIN_SECONDS)
        except TimeoutError:
            # Someone outside the process group still holds the tool's output open.
            log.warning("output did not close after the tool ended")
            pump.cancel()
        if isinstance(execution, InternalCall) and execution.returned:
            reporter.add_result(execution.returned)
        # Stopped by an event, not by cancel(): a cancel that lands inside a NATS request can be
        # swallowed there, and then the renewer would run (and this job wait) forever.
        stop_renewing.set()
        _, still_running = await asyncio.wait({renewer}, timeout=RENEWER_STOP_SECONDS)
        if still_running:
            renewer.cancel()
        outcome["lease"] = holder["lease"]
        return outcome

    @staticmethod
    def _exit_outcome(execution: ToolProcess | InternalCall, exit_code: int) -> dict[str, Any]:
        if isinstance(execution, InternalCall):
            if exit_code == 0:
                return {"status": JobStatus.COMPLETED}
            return {
                "status": JobStatus.FAILED,
                "error": ErrorInfo(
                    code=ErrorCode.CALLABLE_FAILED,
                    message=f"The job raised {execution.error}.",
                ),
            }
        if exit_code == 0:
            return {"status": JobStatus.COMPLETED, "exit_code": 0}
        return {
            "status": JobStatus.FAILED,
            "exit_code": exit_code,
            "error": ErrorInfo(
                code=ErrorCode.EXIT_NONZERO,
                message=f"The tool exited with code {exit_code}; see the last lines of its log.",
            ),
        }

    async def _record_tool(self, job_id: str, tool: ToolProcess, lease: Lease) -> Lease:
        """Write down what finds the tool's process group should this runner die."""
        assert tool.pid is not None
        self.ledger.record(
            orphans.ToolRecord(
                job_id=job_id,
                pgid=tool.pid,
                started=tool.started_ticks,
                boot_id=self.boot_id,
                runner_pid=self.pid,
                runner_started=self.started_ticks,
            )
        )
        value = msgspec.structs.replace(
            lease.value, pid=tool.pid, pgid=tool.pid, started=tool.started_ticks
        )
        return await self.slots.renew(lease, value) or lease

    async def _keep_lease(
        self, holder: dict[str, Lease], job: RunningJob, stop: asyncio.Event
    ) -> None:
        interval = max(0.3, self.settings.lease_ttl_seconds / 3)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            try:
                renewed = await self.slots.renew(holder["lease"])
                if not job.cancel_event.is_set():
                    # A cancel sent while we were cut off from NATS is still in the stream.
                    cancel = await self._last_event(job.job_id, "cancel")
                    if isinstance(cancel, events.CancelRequested):
                        job.cancelled_by = cancel.requested_by
                        job.cancel_event.set()
            except Exception as exc:
                log.warning("lease renewal failed, retrying", error=repr(exc))
                continue
            if renewed is None:
                log.error("lease lost: stopping the tool")
                job.lease_lost.set()
                return
            holder["lease"] = renewed

    # --- cancel and lost runners
    async def _on_cancel(self, msg: Msg) -> None:
        try:
            event = codec.decode(msg.data)
        except msgspec.MsgspecError:
            return
        if isinstance(event, events.CancelRequested) and event.job_id in self.running:
            job = self.running[event.job_id]
            job.cancelled_by = event.requested_by
            job.cancel_event.set()

    async def _on_lease_expired(self, value: SlotValue) -> None:
        """Every runner watches every lease: one that expires means its runner is gone."""
        if value.phase != "held" or value.job_id in self.running:
            return  # a reservation, or ours and alive: the renewer notices a lost lease itself
        log.warning("runner lost", lost_job_id=value.job_id, lost_runner=value.runner_id)
        if value.host == self.host and value.pgid:
            orphans.kill_group(value.pgid, value.started, value.boot_id)
        await self._end(
            value.job_id,
            JobStatus.FAILED,
            error=ErrorInfo(
                code=ErrorCode.RUNNER_LOST,
                message=f"Runner {value.runner_id} stopped renewing its lease; "
                "the job did not finish.",
            ),
        )


async def run_runner(settings: Settings, stop: asyncio.Event) -> None:
    # Imported here: this file is being split; the heartbeat is started from here alone.
    from jobrunner.services.runner.heartbeat import heartbeat

    nc = await eventstore.connect(settings, "runner")
    try:
        runner = Runner(settings, nc)
        async with heartbeat(nc.jetstream(), Names(settings.prefix), settings, runner.runner_id):
            await runner.run(stop)
    finally:
        await eventstore.close(nc)
