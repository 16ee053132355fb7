"""Who this runner is, and what it knows of each job it is handling."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from nats.aio.msg import Msg

from jobrunner.common.processname import process_name
from jobrunner.common.slots import RunRecord, SlotValue, hostname
from jobrunner.services.runner import orphans


@dataclass(frozen=True)
class RunnerIdentity:
    """What a lease records of its runner, so another runner on the host can tell it is gone."""

    runner_id: str
    host: str
    boot_id: str
    pid: int
    started_ticks: int | None

    @classmethod
    def of_this_process(cls, runner_id: str = "") -> RunnerIdentity:
        pid = os.getpid()
        host = hostname()
        return cls(
            runner_id=process_name(runner_id),
            host=host,
            boot_id=orphans.boot_id(),
            pid=pid,
            started_ticks=orphans.start_ticks(pid),
        )

    def held_value(self, job_id: str, job_type: str) -> SlotValue:
        """The lease value of a job this runner holds."""
        return SlotValue(
            job_id=job_id,
            phase="held",
            job_type=job_type,
            runner_id=self.runner_id,
            host=self.host,
            boot_id=self.boot_id,
            runner_pid=self.pid,
            runner_started=self.started_ticks,
        )

    def run_record(self, job_id: str, slot_key: str) -> RunRecord:
        """The record of a job this runner starts now in the slot ``slot_key``."""
        return RunRecord(
            job_id=job_id, slot_key=slot_key, runner_id=self.runner_id, started_at=time.time()
        )

    def is_dead_local_runner(self, value: SlotValue) -> bool:
        """Was ``value`` written by another runner on this host that is no longer alive?"""
        return (
            value.host == self.host
            and value.boot_id == self.boot_id
            and value.runner_pid is not None
            and value.runner_pid != self.pid
            and not orphans.process_alive(value.runner_pid, value.runner_started)
        )


class LeftForNextRunner(Exception):
    """The runner began to stop after it claimed the job's slot and before the job started:
    the claim is to be undone and the request given back (``RunningJob.leave_for_next_runner``)."""


class RunningJob:
    """A job this runner is handling, from its request's delivery to its end.

    A runner handles a job once: a delivery of its request while it is handled (a redelivery,
    say after the runner stalled past the ack wait) only replaces the message it acknowledges.
    """

    def __init__(self, job_id: str, msg: Msg) -> None:
        self.job_id = job_id
        self.msg = msg
        self.acked = False
        # Acknowledged in effect (``acked``) and not yet sent: see ``ack_after``.
        self._ack_due = False
        self.cancelled_by: str | None = None
        self.cancel_event = asyncio.Event()
        # Set by the runner's own stop (``stop_for_runner``), apart from a cancel: a job it
        # interrupts ends RUNNER_STOPPED, one not yet started is left for the next runner.
        self.runner_stopping = asyncio.Event()
        # Set by either: what a job waiting for its slot or its batch's seal wakes up on.
        self.interrupted = asyncio.Event()
        # Whether this job holds one of the runner's max_concurrent_jobs (a job waiting for a
        # slot does not).
        self.holds_capacity = True
        # Whether its slot's claim began: a handling that fails after that gives the claim back.
        self.claiming = False

    @property
    def first_delivery(self) -> bool:
        """Is this the request's first delivery (no runner can have handled it before)?
        False when unknown: the caller then takes the careful path of a redelivery."""
        try:
            return self.msg.metadata.num_delivered == 1
        except Exception:  # not a JetStream delivery: its metadata cannot be read
            return False

    @property
    def stream_seq(self) -> int | None:
        """The request's sequence in the event stream; None when it cannot be read."""
        try:
            return int(self.msg.metadata.sequence.stream)
        except Exception:  # not a JetStream delivery: its metadata cannot be read
            return None

    async def ack(self) -> None:
        """Acknowledge the request (its latest delivery): it will not be delivered again."""
        # Marked first: a delivery arriving during the ack is then acknowledged by redelivered().
        self.acked = True
        self._ack_due = False
        await self.msg.ack()

    def ack_after(self) -> None:
        """The request counts as acknowledged from now on (``acked``: its handling is past the
        point of giving its claim back), its ack sent by ``send_due_ack`` with a later write:
        the ack of a job whose ``running`` is stored goes out with the lease's rewrite after the
        tool's start, one socket write (and one wake-up of nats-server) instead of two."""
        self.acked = True
        self._ack_due = True

    async def send_due_ack(self) -> None:
        """Send the ack ``ack_after`` left due, if it still is."""
        if self._ack_due:
            await self.msg.ack()
            self._ack_due = False

    async def redelivered(self, msg: Msg) -> None:
        """The request came again while this job is handled: acknowledge that delivery instead."""
        self.msg = msg
        if self.acked:
            self._ack_due = False  # this delivery's ack is the one due
            await msg.ack()

    def cancel(self, by: str | None) -> None:
        self.cancelled_by = self.cancelled_by or by
        self.cancel_event.set()
        self.interrupted.set()

    def stop_for_runner(self) -> None:
        """The runner is stopping: not a cancel (no one asked for the job's end)."""
        self.runner_stopping.set()
        self.interrupted.set()

    @property
    def left_for_next_runner(self) -> bool:
        """Whether a job not yet started gives way at the runner's stop: its request goes back
        to the stream (another runner, or this one started again, takes it); never when it was
        also cancelled (the cancel ends it)."""
        return self.runner_stopping.is_set() and not self.cancel_event.is_set()

    async def leave_for_next_runner(self) -> None:
        """Give the request back, unacknowledged, to be delivered again at once to a runner
        still taking requests (this one takes no more)."""
        await self.msg.nak()
