"""What runs a job: a tool process or an internal callable, behind one interface.

The runner runs both the same way: ``start``, then ``pump`` (its output to the job's reporter)
beside ``wait`` (its exit code), and ``stop`` on cancel, timeout or a lost lease; ``outcome`` says
how the job ended when it ended by itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from jobrunner.common.jobtypes import JobType, build_argv, expand_env
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.services.runner.artifacts import OUTPUT_ENV
from jobrunner.services.runner.internal import CallableFailed, InternalCall
from jobrunner.services.runner.priority import ToolPriority
from jobrunner.services.runner.process import SpawnError, ToolProcess
from jobrunner.services.runner.reporting import JobReporter

LEASE_LOST = ErrorInfo(
    code=ErrorCode.LEASE_LOST,
    message="The runner could not renew the job's slot lease in time (NATS unreachable or the "
    "runner stalled); the job was stopped so that it never runs beside another.",
)


@dataclass(frozen=True)
class Outcome:
    """How a job ended, as its terminal StatusChanged will say."""

    status: JobStatus
    exit_code: int | None = None
    error: ErrorInfo | None = None
    cancelled_by: str | None = None
    # Already in the stream (an external job's worker ended it): nothing to publish.
    stored: bool = False


@dataclass(frozen=True)
class ProcessGroup:
    """A tool's process group: what finds it again should the runner die."""

    pgid: int
    started: int | None


class StartFailed(Exception):
    """The job could not be started (the message says why, for the job's SPAWN_FAILED)."""


class Execution(Protocol):
    async def start(self) -> None:
        """Start the job; raises StartFailed."""

    async def pump(self, reporter: JobReporter) -> None:
        """Hand everything the job reports to ``reporter`` until its output ends."""

    async def wait(self) -> int:
        """The job's exit code once it ended."""

    async def stop(self, grace_seconds: float) -> None:
        """Ask the job to stop; after ``grace_seconds`` end it by force."""

    def outcome(self, exit_code: int) -> Outcome:
        """How the job ended when it ended by itself with ``exit_code``."""

    def hold_until(self, deadline: float) -> None:
        """End the job's processes at ``deadline`` (time.monotonic()), even should the runner
        stall, unless a later deadline comes first (its lease renewed)."""

    def reported_exit_code(self, exit_code: int) -> int | None:
        """The exit code a stopped job's end reports (a callable has none)."""

    @property
    def process_group(self) -> ProcessGroup | None:
        """The started tool's process group; None for what runs inside the runner."""


class ToolExecution:
    """A tool as a subprocess in its own process group."""

    def __init__(self, tool: ToolProcess, max_line_bytes: int) -> None:
        self.tool = tool
        self.max_line_bytes = max_line_bytes
        self._stopping = False

    async def start(self) -> None:
        try:
            await self.tool.start()
        except SpawnError as exc:
            raise StartFailed(str(exc)) from None

    async def pump(self, reporter: JobReporter) -> None:
        def sink(stream: str, lines: list[str], transient: str | None, at: datetime) -> None:
            reporter.lines(stream, lines, at)
            if transient is not None:
                reporter.line(stream, transient, at, transient=True)

        await self.tool.pump(sink, reporter.room, self.max_line_bytes, reporter.publisher.rest)

    async def wait(self) -> int:
        exit_code = await self.tool.wait()
        if not self._stopping:
            # Ended by itself: nothing of the tool outlives it. (A stop gives the rest of the
            # group its grace period first, and kills it after.)
            self.tool.end_group()
        return exit_code

    async def stop(self, grace_seconds: float) -> None:
        self._stopping = True
        await self.tool.stop(grace_seconds)

    def hold_until(self, deadline: float) -> None:
        self.tool.hold_until(deadline)

    def outcome(self, exit_code: int) -> Outcome:
        if self.tool.killed_at_deadline(exit_code):
            # The guardian killed it: the runner stalled past its lease (guardian.py).
            return Outcome(JobStatus.FAILED, exit_code=exit_code, error=LEASE_LOST)
        if exit_code == 0:
            return Outcome(JobStatus.COMPLETED, exit_code=0)
        return Outcome(
            JobStatus.FAILED,
            exit_code=exit_code,
            error=ErrorInfo(
                code=ErrorCode.EXIT_NONZERO,
                message=f"The tool exited with code {exit_code}; see the last lines of its log.",
            ),
        )

    def reported_exit_code(self, exit_code: int) -> int | None:
        return exit_code

    @property
    def process_group(self) -> ProcessGroup | None:
        if self.tool.pid is None:
            return None
        return ProcessGroup(pgid=self.tool.pid, started=self.tool.started_ticks)


class InternalExecution:
    """A Python callable running inside the runner."""

    def __init__(self, call: InternalCall) -> None:
        self.call = call

    async def start(self) -> None:
        try:
            await self.call.start()
        except CallableFailed as exc:
            raise StartFailed(str(exc)) from None

    async def pump(self, reporter: JobReporter) -> None:
        await self.call.pump(reporter)
        # The pump ends when the callable returned; a dict it returned joins the result after
        # everything it reported on the way.
        task = self.call.task
        if task is not None and task.done() and not task.cancelled() and not task.exception():
            returned = task.result()
            if isinstance(returned, dict) and returned:
                reporter.add_result(returned)

    async def wait(self) -> int:
        return await self.call.wait()

    async def stop(self, grace_seconds: float) -> None:
        await self.call.stop(grace_seconds)

    def hold_until(self, deadline: float) -> None:
        pass  # it runs in the runner's process: no process of its own for the guardian to kill

    def outcome(self, exit_code: int) -> Outcome:
        if exit_code == 0:
            return Outcome(JobStatus.COMPLETED)
        return Outcome(
            JobStatus.FAILED,
            error=ErrorInfo(
                code=ErrorCode.CALLABLE_FAILED, message=f"The job raised {self.call.error}."
            ),
        )

    def reported_exit_code(self, exit_code: int) -> int | None:
        return None

    @property
    def process_group(self) -> ProcessGroup | None:
        return None


def execution_for(
    request: events.JobRequested,
    job_type: JobType,
    settings: Settings,
    output_dir: Path | None = None,
    priority: ToolPriority | None = None,
) -> Execution:
    own_env = {"JOBRUNNER_DEMO_PACE": str(settings.demo_pace)}
    own_env.update({k: expand_env(v) for k, v in job_type.env.items()})
    if output_dir is not None:
        # Set last: a job type's env cannot point the job's artifacts elsewhere.
        own_env[OUTPUT_ENV] = str(output_dir)
    if job_type.callable:
        return InternalExecution(
            InternalCall(job_type.callable, request.job_id, request.parameters, own_env)
        )
    # The runner's own settings (NATS and database URLs with their passwords) are not the
    # tool's business: everything else of the runner's environment is passed on.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    env = {**inherited, "PYTHONUNBUFFERED": "1", **own_env}
    cwd = expand_env(job_type.cwd) if job_type.cwd else None
    tool = ToolProcess(build_argv(job_type, request.parameters), cwd, env, priority)
    return ToolExecution(tool, settings.max_line_bytes)
