"""The runner service: takes JobRequested from a shared durable consumer, claims the job's slot,
runs it and publishes what happens. Any number of runners can share one NATS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from datetime import datetime
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from nats.js.kv import KV_PURGE

from contracts import codec, events
from contracts.events import ErrorCode, ErrorInfo, JobStatus
from contracts.names import Names
from jobrunner import eventstore
from jobrunner.jobtypes import JobType, build_argv, expand_env, load_job_types
from jobrunner.settings import Settings
from jobrunner.slots import Lease, SlotTable, SlotValue, hostname, slot_key
from services.runner import output
from services.runner.process import SpawnError, ToolProcess
from services.runner.publisher import LinePublisher, publish_with_retry

log = structlog.get_logger()

ACK_WAIT = 30.0


class RunningJob:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.cancelled_by: str | None = None
        self.cancel_event = asyncio.Event()
        self.lease_lost = asyncio.Event()


class Runner:
    def __init__(self, settings: Settings, nc: NATS) -> None:
        self.settings = settings
        self.names = Names(settings.prefix)
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.runner_id = settings.runner_id or f"{hostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.job_types = load_job_types(settings.job_types_file)
        self.slots = SlotTable(self.js, self.names, settings.lease_ttl_seconds)
        self.running: dict[str, RunningJob] = {}
        self.capacity = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slot_values: dict[str, SlotValue] = {}

    # --- lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        await eventstore.ensure_topology(self.js, self.names, self.settings)
        cancel_sub = await self.nc.subscribe(self.names.kind_subjects("cancel"), cb=self._on_cancel)
        watcher = asyncio.create_task(self._watch_leases(stop))
        sub = await self.js.pull_subscribe(
            self.names.kind_subjects("requested"),
            durable=self.names.runner_consumer,
            stream=self.names.stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT,
                max_ack_pending=10_000,
                max_deliver=-1,
            ),
        )
        log.info("runner started", runner_id=self.runner_id, job_types=list(self.job_types))
        try:
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
            watcher.cancel()
            await cancel_sub.unsubscribe()
            for job in self.running.values():
                job.cancelled_by = job.cancelled_by or "runner shutdown"
                job.cancel_event.set()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- one job
    async def _handle(self, msg: Msg) -> None:
        try:
            event = codec.decode(msg.data)
            if not isinstance(event, events.JobRequested):
                await msg.term()
                return
            structlog.contextvars.bind_contextvars(job_id=event.job_id)
            await self._handle_request(msg, event)
        except Exception:
            log.exception("job handling crashed")
        finally:
            structlog.contextvars.unbind_contextvars("job_id")
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

    async def _handle_request(self, msg: Msg, request: events.JobRequested) -> None:
        job_id = request.job_id
        status = await self._last_event(job_id, "status")
        if isinstance(status, events.StatusChanged):
            if status.status == JobStatus.RUNNING:
                # Delivered again after it started: its runner died before finishing.
                await self._end(
                    job_id,
                    JobStatus.FAILED,
                    error=ErrorInfo(
                        code=ErrorCode.RUNNER_LOST,
                        message="The runner running this job stopped; the job did not finish.",
                    ),
                )
            await msg.ack()
            return
        job_type = self.job_types.get(request.job_type)
        if job_type is None:
            await self._end(
                job_id,
                JobStatus.FAILED,
                error=ErrorInfo(
                    code="UNKNOWN_JOB_TYPE",
                    message=f"This runner has no job type {request.job_type!r}; check job_types_file.",
                ),
            )
            await msg.ack()
            return

        job = RunningJob(job_id)
        self.running[job_id] = job
        try:
            lease = await self._claim_slot(msg, request, job)
            if lease is None:
                return
            await self._run_claimed(msg, request, job_type, job, lease)
        finally:
            self.running.pop(job_id, None)

    async def _claim_slot(
        self, msg: Msg, request: events.JobRequested, job: RunningJob
    ) -> Lease | None:
        key = slot_key(request.lock, request.job_id)
        value = SlotValue(
            job_id=request.job_id,
            phase="held",
            job_type=request.job_type,
            runner_id=self.runner_id,
            host=hostname(),
        )
        while True:
            if job.cancel_event.is_set() or await self._last_event(request.job_id, "cancel"):
                await self._end(request.job_id, JobStatus.CANCELLED, cancelled_by=job.cancelled_by)
                await msg.ack()
                return None
            lease = await self.slots.try_acquire(key, value)
            if lease is not None:
                return lease
            # Busy: keep the request ours while we wait for the slot to free.
            await msg.in_progress()
            await self._wait_for_slot_change(key, job, timeout=ACK_WAIT / 3)

    async def _wait_for_slot_change(self, key: str, job: RunningJob, timeout: float) -> None:
        kv = await self.slots.kv()
        watcher = await kv.watch(key)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
                if job.cancel_event.is_set():
                    return
                try:
                    entry = await watcher.updates(timeout=min(remaining, 0.5))
                except (NatsTimeoutError, TimeoutError):
                    continue
                if entry is not None and entry.operation is not None:
                    return  # deleted or expired: try again
        finally:
            await watcher.stop()

    async def _run_claimed(
        self,
        msg: Msg,
        request: events.JobRequested,
        job_type: JobType,
        job: RunningJob,
        lease: Lease,
    ) -> None:
        job_id = request.job_id
        await self._publish(
            events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING, runner_id=self.runner_id)
        )
        # Acknowledged once running: a redelivery after this point can only mean we died, and
        # then the job ends as RUNNER_LOST instead of running twice.
        await msg.ack()
        started = asyncio.get_running_loop().time()
        publisher = LinePublisher(self.js, self.names, job_id, self.settings.line_batch_max)
        publisher.start()
        outcome = await self._execute(request, job_type, job, publisher, lease)
        await publisher.close()
        if job.lease_lost.is_set():
            log.warning("lease lost: not reporting the end of a job we no longer own")
            return
        lease = outcome.pop("lease")
        await self._end(job_id, **outcome)
        await self.slots.release(lease)
        log.info(
            "job finished",
            job_type=request.job_type,
            status=str(outcome["status"]),
            exit_code=outcome.get("exit_code"),
            lines=publisher.published_lines,
            seconds=round(asyncio.get_running_loop().time() - started, 3),
        )

    async def _execute(
        self,
        request: events.JobRequested,
        job_type: JobType,
        job: RunningJob,
        publisher: LinePublisher,
        lease: Lease,
    ) -> dict[str, Any]:
        argv = build_argv(job_type, request.parameters)
        env = dict(os.environ)
        env["JOBRUNNER_DEMO_PACE"] = str(self.settings.demo_pace)
        env["PYTHONUNBUFFERED"] = "1"
        env.update({k: expand_env(v) for k, v in job_type.env.items()})
        masks = [m for m in (expand_env(v) for v in job_type.mask) if m]
        progress_re = (
            re.compile(job_type.progress_pattern)
            if job_type.progress_pattern
            else output.DEFAULT_PROGRESS_RE
        )
        level_re = re.compile(job_type.level_pattern) if job_type.level_pattern else None

        async def sink(stream: str, text: str, at: datetime) -> None:
            for secret in masks:
                text = text.replace(secret, "***")
            await publisher.add(stream, output.parse_level(text, pattern=level_re), text, at)
            progress = output.parse_progress(text, progress_re)
            if progress is not None:
                publisher.report_progress(progress)

        tool = ToolProcess(argv, expand_env(job_type.cwd) if job_type.cwd else None, env)
        try:
            await tool.start()
        except SpawnError as exc:
            return {
                "status": JobStatus.FAILED,
                "lease": lease,
                "error": ErrorInfo(code=ErrorCode.SPAWN_FAILED, message=str(exc)),
            }
        lease = (
            await self.slots.renew(
                lease, msgspec.structs.replace(lease.value, pid=tool.pid, pgid=tool.pid)
            )
            or lease
        )
        holder = {"lease": lease}
        renewer = asyncio.create_task(self._keep_lease(holder, job, tool))
        pump = asyncio.create_task(tool.pump(sink, self.settings.max_line_bytes))
        waiter = asyncio.create_task(tool.wait())
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
            tool.signal_group(9)  # nothing of the tool outlives it
            if exit_code == 0:
                outcome = {"status": JobStatus.COMPLETED, "exit_code": 0}
            else:
                outcome = {
                    "status": JobStatus.FAILED,
                    "exit_code": exit_code,
                    "error": ErrorInfo(
                        code=ErrorCode.EXIT_NONZERO,
                        message=f"The tool exited with code {exit_code}; see the last lines of its log.",
                    ),
                }
        else:
            await tool.stop(job_type.cancel_grace_seconds)
            exit_code = waiter.result() if waiter.done() else await waiter
            if cancel in done:
                outcome = {
                    "status": JobStatus.CANCELLED,
                    "exit_code": exit_code,
                    "cancelled_by": job.cancelled_by,
                }
            elif lost in done:
                outcome = {"status": JobStatus.FAILED, "exit_code": exit_code}
            else:
                outcome = {
                    "status": JobStatus.FAILED,
                    "exit_code": exit_code,
                    "error": ErrorInfo(
                        code=ErrorCode.PROCESSING_TIMEOUT,
                        message=f"The job ran longer than its timeout of "
                        f"{job_type.timeout_seconds:g} s and was stopped.",
                    ),
                }
        for task in (cancel, lost):
            task.cancel()
        try:
            await asyncio.wait_for(pump, timeout=5.0)
        except TimeoutError:
            log.warning("output did not close after the tool ended")
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        outcome["lease"] = holder["lease"]
        return outcome

    async def _keep_lease(
        self, holder: dict[str, Lease], job: RunningJob, tool: ToolProcess
    ) -> None:
        interval = max(0.3, self.settings.lease_ttl_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self.slots.renew(holder["lease"])
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

    async def _watch_leases(self, stop: asyncio.Event) -> None:
        """Every runner watches every lease: one that expires means its runner is gone."""
        while not stop.is_set():
            try:
                kv = await self.slots.kv()
                watcher = await kv.watchall()
                while not stop.is_set():
                    try:
                        entry = await watcher.updates(timeout=1.0)
                    except (NatsTimeoutError, TimeoutError):
                        continue
                    if entry is None:
                        continue
                    if entry.operation is None and entry.value:
                        self._slot_values[entry.key] = msgspec.json.decode(
                            entry.value, type=SlotValue
                        )
                        continue
                    value = self._slot_values.pop(entry.key, None)
                    if entry.operation == KV_PURGE and value and value.phase == "held":
                        await self._declare_lost(value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease watch failed, restarting", error=repr(exc))
                await asyncio.sleep(1.0)

    async def _declare_lost(self, value: SlotValue) -> None:
        if value.job_id in self.running:
            return  # ours and alive: the renewer will notice the lost lease itself
        log.warning("runner lost", job_id=value.job_id, lost_runner=value.runner_id)
        if value.host == hostname() and value.pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(value.pgid, 9)
        await self._end(
            value.job_id,
            JobStatus.FAILED,
            error=ErrorInfo(
                code=ErrorCode.RUNNER_LOST,
                message=f"Runner {value.runner_id} stopped renewing its lease; the job did not finish.",
            ),
        )


async def run_runner(settings: Settings, stop: asyncio.Event) -> None:
    nc = await eventstore.connect(settings, "runner")
    try:
        await Runner(settings, nc).run(stop)
    finally:
        await eventstore.close(nc)
