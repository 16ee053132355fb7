"""External jobs: the work is done elsewhere, and its worker reports over HTTP.

The API publishes what the worker reports (its first report makes the job running, its final
one ends it). The runner "runs" the job all the same: it holds the job's slot under a renewed
lease for as long as the job lasts, so a lock is held while the worker works, and it ends the
job when nobody else does: ``PROCESSING_TIMEOUT`` once the worker has been silent for the type's
``heartbeat_seconds`` (else its ``timeout_seconds``), ``cancelled`` (a status, no error code)
on a cancel, ``LEASE_LOST`` when the lease goes, ``RUNNER_STOPPED`` when its runner is stopped
(the worker, elsewhere, may still be working: its next report is told the job ended).

Signs of life come as plain NATS notices from the API (``Names.external_reported_subject``), and
the end as the job's terminal ``StatusChanged``. Either can be missed while NATS is away, so the
runner also looks in the stream: for the terminal status every poll, and for the last stored
report before it calls the worker silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jobrunner.common import eventstore
from jobrunner.common.jobtypes import JobType
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.services.runner.execution import Outcome, ProcessGroup
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.reporting import JobReporter

# Exit codes ``wait`` returns (nothing runs; they only say which way it ended).
ENDED_ELSEWHERE = 0
WORKER_SILENT = 1
STOPPED = 2
# How often the stream is asked whether the job ended (a terminal status missed while NATS was
# away), at most; shorter for short silences.
MAX_POLL_SECONDS = 2.0


class ExternalExecution:
    """The runner's side of an external job: hold, watch, and end it if the worker goes quiet."""

    def __init__(
        self, nc: NATS, journal: JobJournal, request: events.JobRequested, job_type: JobType
    ) -> None:
        self.nc = nc
        self.journal = journal
        self.job_id = request.job_id
        self.silence_limit = job_type.heartbeat_seconds or job_type.timeout_seconds
        self.poll = max(0.05, min(MAX_POLL_SECONDS, self.silence_limit / 4))
        self._signs = asyncio.Event()
        self._ended: events.StatusChanged | None = None
        self._stop = asyncio.Event()
        self._last_sign = 0.0  # wall clock: compared with the stored reports' times
        self._subs: list[Any] = []

    async def start(self) -> None:
        names = self.journal.names
        self._last_sign = time.time()
        self._subs = [
            await self.nc.subscribe(names.external_reported_subject(self.job_id), cb=self._sign),
            await self.nc.subscribe(
                names.job_kind_subject(self.job_id, "status"), cb=self._on_status
            ),
        ]

    async def _sign(self, _: Msg) -> None:
        self._last_sign = time.time()
        self._signs.set()

    async def _on_status(self, msg: Msg) -> None:
        try:
            event = codec.decode(msg.data)
        except msgspec.MsgspecError:
            return
        if getattr(event, "job_id", None) != self.job_id:
            return  # another job's event on this job's subject: not written by jobrunner
        self._last_sign = time.time()  # published just now (a poll's old status is not)
        self._take_status(event)

    def _take_status(self, event: object) -> None:
        if isinstance(event, events.StatusChanged) and event.status.is_terminal:
            self._ended = event
            self._signs.set()

    async def pump(self, reporter: JobReporter) -> None:
        """Nothing to pump: the API publishes the worker's lines and progress itself."""

    async def wait(self) -> int:
        try:
            while True:
                if self._ended is not None:
                    return ENDED_ELSEWHERE
                if self._stop.is_set():
                    return STOPPED
                remaining = self._last_sign + self.silence_limit - time.time()
                if remaining <= 0 and not await self._stored_report_since():
                    return WORKER_SILENT
                self._signs.clear()
                # Wall time on purpose: the silence limit is the worker's promise on the clock,
                # and this timer only wakes the verdict, which reads the stream first
                # (``_stored_report_since``): a sign the blocked loop had not handed over counts.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.01, min(max(remaining, 0), self.poll))):
                        await self._signs.wait()
                if not self._signs.is_set():
                    # A poll: a terminal status may have been stored while NATS was away.
                    self._take_status(await self._quietly(self.journal.last_status(self.job_id)))
        finally:
            # Bounded: with NATS frozen while much was being sent, an unsubscribe waits for it
            # (eventstore.UNSUBSCRIBE_STOP_SECONDS), and the job's end (its stop) with it.
            await eventstore.unsubscribe_within(
                self._subs,
                eventstore.UNSUBSCRIBE_STOP_SECONDS,
                "an external job's subscriptions",
                closing=False,  # a job's end: the runner and its connection go on
            )

    async def _stored_report_since(self) -> bool:
        """Whether the stream holds a report newer than the last sign we saw (one we missed)."""
        newest = self._last_sign
        for kind in ("lines", "progress", "status"):
            event = await self._quietly(self.journal.last_event(self.job_id, kind))
            if isinstance(event, events.Event):
                newest = max(newest, event.occurred_at.timestamp())
            if kind == "status":
                self._take_status(event)
        if self._ended is not None:
            return True
        if newest > self._last_sign:
            self._last_sign = newest
            return newest + self.silence_limit > time.time()
        return False

    @staticmethod
    async def _quietly(read: Any) -> Any:
        """A read of the stream, or None while NATS does not answer (the next poll asks again)."""
        try:
            return await read
        except Exception:
            return None

    async def stop(self, grace_seconds: float) -> None:
        self._stop.set()
        self._signs.set()

    def hold_until(self, deadline: float) -> None:
        pass  # no process of the runner's host: the worker elsewhere learns of the job's end

    def outcome(self, exit_code: int) -> Outcome:
        if exit_code == ENDED_ELSEWHERE and self._ended is not None:
            ended = self._ended
            return Outcome(
                ended.status,
                exit_code=ended.exit_code,
                error=ended.error,
                cancelled_by=ended.cancelled_by,
                stored=True,
            )
        return Outcome(
            JobStatus.FAILED,
            error=ErrorInfo(
                code=ErrorCode.PROCESSING_TIMEOUT,
                message=f"The external worker reported nothing for {self.silence_limit:g} s.",
            ),
        )

    def reported_exit_code(self, exit_code: int) -> int | None:
        return None

    @property
    def process_group(self) -> ProcessGroup | None:
        return None
