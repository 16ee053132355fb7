"""The runner service: takes JobRequested from a shared durable consumer, claims the job's slot,
runs it and publishes what happens. Any number of runners can share one NATS.

A job's life in a runner, one module per step:

1. ``requests``: fetched from the durable consumer (a runner fetches only while it has capacity);
2. ``seals``: a job of a batch waits (holding no capacity) until its batch is sealed;
3. ``claim``: its slot claimed, a lease in the lock bucket. A busy slot is waited for without
   holding capacity; for a ``queue`` type only the head of the lock's queue may take it. A job
   without a lock at its first delivery is claimed in one round trip (lease, run record and
   checks at once);
4. ``executor``: ``running`` published, then the request acknowledged, then the tool started (a
   request delivered again after that means its runner died, and the job ends RUNNER_LOST
   instead of running twice);
5. ``execution`` (the tool or internal callable) runs while ``lease`` keeps the lease; cancel,
   timeout and a lost lease stop it; its end is published with the terminal event id and the
   slot released.

``sweep`` ends what dead runners left behind: at start, when a lease expires, and every third
of the TTL from the running jobs' records. This module wires the parts together.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from jobrunner.common import (
    deathsignal,
    eventstore,
    heap,
    metrics,
    reconfigure,
    retry,
    stopping,
)
from jobrunner.common.jobtypes import JobType, load_job_types
from jobrunner.common.settings import RUNNER_REQUESTS_IN_FLIGHT, Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts.names import Names
from jobrunner.services.runner import artifacts, orphans, process
from jobrunner.services.runner import bulk as bulk_lane
from jobrunner.services.runner.board import LockBoard, open_watch
from jobrunner.services.runner.bulk import BulkLane
from jobrunner.services.runner.claim import SlotClaimer
from jobrunner.services.runner.executor import JobExecutor
from jobrunner.services.runner.guardian import GUARDIAN
from jobrunner.services.runner.heartbeat import heartbeat
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.lockmetrics import LOCKS
from jobrunner.services.runner.publisher import check_line_fits
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.requests import RequestLoop
from jobrunner.services.runner.running import RunnerIdentity
from jobrunner.services.runner.seals import BatchSeals, SealWaiter
from jobrunner.services.runner.sweep import LostJobSweeper

log = structlog.get_logger()

# How long the lock watcher may take to notice it should stop (it may be inside a NATS call).
WATCHER_STOP_SECONDS = 10.0


# What a job stopped by the runner's stop still needs after its cancel grace, within the
# stop's deadline before the connections' close: the SIGKILL, its output's drain, its ending's
# publish, its lease's release: well under this with NATS answering. (The drain may take up to
# PUMP_DRAIN_SECONDS when a tool's descendant outside its process group holds its output open:
# a rare tool, not worth a warning at every default start.)
AFTER_GRACE_SECONDS = 2.0


def stop_needed_seconds(job_type: JobType) -> float:
    """The stop_seconds a runner needs to end a job of ``job_type`` stopped at its stop
    (one whose tool ignores SIGTERM uses its whole grace), the NATS connections' close kept."""
    return job_type.cancel_grace_seconds + AFTER_GRACE_SECONDS + eventstore.CLOSE_KEEP_SECONDS


def warn_if_stop_too_short(job_types: dict[str, JobType], stop_seconds: float) -> None:
    """Say at start which job types a stop of ``stop_seconds`` may cut short: a job of theirs
    still running at the stop is then left to end with the runner, RUNNER_LOST once its lease
    runs out, instead of RUNNER_STOPPED."""
    short = {
        name: stop_needed_seconds(job_type)
        for name, job_type in job_types.items()
        if not job_type.external and stop_needed_seconds(job_type) > stop_seconds
    }
    if short:
        log.warning(
            "stop_seconds is too short for these job types' cancel_grace_seconds: a job of"
            " theirs running at the runner's stop may end RUNNER_LOST instead of RUNNER_STOPPED;"
            " lower their cancel_grace_seconds, or raise stop_seconds (15 at most)",
            job_types=sorted(short),
            stop_seconds=stop_seconds,
            stop_seconds_needed=max(short.values()),
        )


class Runner:
    def __init__(self, settings: Settings, nc: NATS, bulk: BulkLane | None = None) -> None:
        self.settings = settings
        self.names = Names(settings.prefix)
        self.nc = nc
        # Set when its stop begins (stop_deadlines), once: bounds that each hold would add up,
        # in series, past the supervisor's grace.
        self._stop_deadlines: tuple[stopping.Deadline, stopping.Deadline] | None = None
        self.js = nc.jetstream()
        self.identity = RunnerIdentity.of_this_process(settings.runner_id)
        self.job_types = load_job_types(settings.job_types_file)
        self.slots = SlotTable(self.js, self.names, settings.lease_ttl_seconds)
        self.board = LockBoard()
        metrics.KNOWN.learn(
            self.job_types, (t.lock for t in self.job_types.values() if t.lock is not None)
        )
        LOCKS.add(self.board)
        self.journal = JobJournal(nc, self.js, self.names, self.identity.runner_id)
        self.ack_wait = request_ack_wait(settings.lease_ttl_seconds)
        # A job whose runner died ends within the lease TTL plus this, once any runner is alive.
        self.sweep_interval = max(0.5, settings.lease_ttl_seconds / 3)
        capacity = asyncio.Semaphore(settings.max_concurrent_jobs)
        # One definition of an orphaned queue head, and one age per head, for both droppers.
        queue_orphans = QueueOrphans(self.slots, self.journal, settings.queue_orphan_seconds)
        claimer = SlotClaimer(
            self.slots,
            self.board,
            self.journal,
            self.identity,
            capacity,
            self.ack_wait / 3,
            queue_orphans,
        )
        self.ledger = ledger = orphans.ToolLedger(Path(settings.state_dir) / "runner-tools")
        executor = JobExecutor(settings, nc, self.slots, self.journal, self.identity, ledger, bulk)
        self.seals = BatchSeals(self.js, self.names, self.ack_wait / 3)
        seal_waiter = SealWaiter(
            self.seals,
            self.slots,
            self.journal,
            capacity,
            settings.batch_seal_timeout_seconds,
            self.ack_wait / 3,
        )
        self.requests = RequestLoop(
            self.job_types,
            self.slots,
            self.journal,
            claimer,
            seal_waiter,
            executor,
            capacity,
            self.ack_wait,
        )
        self.sweeper = LostJobSweeper(
            self.slots,
            self.board,
            self.journal,
            self.identity,
            ledger,
            self.requests.running,
            queue_orphans,
        )

    def stop_deadlines(self) -> tuple[stopping.Deadline, stopping.Deadline]:
        """The stop's two ends, fixed at its first call: the whole stop's (stop_seconds, the NATS
        connections' closes included), and the one before it for what still uses them (the
        jobs' ends, the watcher and sweeper, the heartbeat, the bulk lane), which keeps the
        closes their CLOSE_KEEP_SECONDS. Computed once: asked again at each step, the keep
        would be taken again from what is left, and shrink step by step."""
        if self._stop_deadlines is None:
            whole = stopping.Deadline(self.settings.stop_seconds)
            self._stop_deadlines = (whole, whole.keeping(eventstore.CLOSE_KEEP_SECONDS))
        return self._stop_deadlines

    def users_deadline(self) -> stopping.Deadline:
        """The stop's end for what still uses the NATS connections (see stop_deadlines)."""
        return self.stop_deadlines()[1]

    async def run(self, stop: asyncio.Event) -> None:
        """Runs jobs until ``stop``; the streams and buckets are declared already (run_runner)."""
        locks = await retry.until_jetstream_ready(self.slots.kv, "the lock bucket")
        board_watch = await retry.until_jetstream_ready(
            lambda: open_watch(locks), "the lock bucket's watch"
        )
        watcher = asyncio.create_task(
            self.board.watch(locks, stop, self.sweeper.on_lease_expired, board_watch),
            name="lock board watch",
        )
        cancel_sub = await self.requests.subscribe_cancels(self.nc)
        seal_sub = await self.seals.subscribe(self.nc)
        sweeping = asyncio.Event()  # set when the runner stops
        sweeper: asyncio.Task[None] | None = None
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.board.ready.wait(), 10.0)
            # Stays on the connection's timeout, not the start's: what it sends (a dead local
            # runner's jobs ended, their leases released) goes through the runner's own paths,
            # with their own waits and retries, and a lease's release is conditional on the
            # revision it read: sent again after a first that went through, it is refused.
            await self.sweeper.clean_up_after_crash()
            leftovers = await asyncio.to_thread(artifacts.remove_leftovers, self.settings)
            if leftovers:
                log.info("output directories of a previous run removed", count=leftovers)
            # Before the first job: how its tools die with the runner (guardian.py), else how
            # they start so that the kernel kills them (deathsignal.py, asked once).
            if not GUARDIAN.start():
                await deathsignal.probe()
            sweeper = asyncio.create_task(
                self.sweeper.sweep_every(self.sweep_interval, sweeping), name="lost-job sweeper"
            )
            sub = await subscribe_requests(self.js, self.names, self.ack_wait)
            warn_if_stop_too_short(self.job_types, self.settings.stop_seconds)
            log.info(
                "runner started",
                runner_id=self.identity.runner_id,
                job_types=list(self.job_types),
            )
            metrics.SERVICE_STARTED.set(1)  # after the line: `jobrunner up` shows it first
            heap.freeze_startup_objects()
            heap.collect_young_less_often()
            await self.requests.run(sub, stop)
        finally:
            # The stop's deadline starts here (run_runner's closes keep their part of it).
            users = self.users_deadline()
            # No sweep begins while the jobs end: one under way has until the bound below.
            sweeping.set()
            await self.requests.end_jobs(users.left())
            await eventstore.unsubscribe_within(
                [cancel_sub, seal_sub],
                users.left(eventstore.UNSUBSCRIBE_STOP_SECONDS),
                "the runner's cancel and seal subscriptions",
            )
            watcher.cancel()
            background = {watcher} if sweeper is None else {watcher, sweeper}
            # A sweep waiting on a frozen NATS is cut short at the bound: left running, it
            # would go on into the connections' close and the process's end (where asyncio
            # cancels it only after everything else). Nothing is lost: a sweep's every step is
            # done again by the next sweep of any runner (``LostJobSweeper``).
            await stopping.wait_within(
                background,
                users.left(WATCHER_STOP_SECONDS),
                "lock watcher or sweeper did not end within the stop's bound: cut short",
                cancel_left=True,
                level="warning",
            )
            await asyncio.to_thread(self.ledger.close)


def request_ack_wait(lease_ttl_seconds: float) -> float:
    """Unacknowledged requests (jobs waiting for a slot) come back to another runner this long
    after their runner stopped saying "in progress" (every third of it).

    One lease TTL: the requests a killed runner held queued come back (between two thirds of
    the TTL and the TTL after its death) as its running job's lease expires, so the lock's next
    job starts on another runner then, not a whole longer ack wait later (twice the TTL made
    the queue stand still up to 30 s behind a killed runner). A live runner keeps its requests
    through a stall of two thirds of the TTL, longer than the stall its running jobs' leases
    survive (``lease.survivable_outage``). Should one come back all the same (a stall past
    that), the job still runs once: its slot's lease and its conditional ``running`` admit one
    runner (``claim``, ``executor``). The price: "in progress" every third of the TTL instead
    of every two thirds from a job waiting for capacity or for its batch's seal (one queued
    behind a held slot says it at each renewal of that lease anyway: the renewal wakes it)."""
    return max(2.0, lease_ttl_seconds)


async def subscribe_requests(
    js: JetStreamContext, names: Names, ack_wait: float
) -> JetStreamContext.PullSubscription:
    """The runners' shared request consumer: created by the first runner, bound by the others
    (several may start at once: the same configuration is no error). One an earlier start left
    otherwise (another lease TTL's ack wait, an older version's or an operator's filter or
    limits) is first made what a runner needs, or refused (``reconfigure.durable_consumer``)."""
    wanted = api.ConsumerConfig(
        filter_subject=names.kind_subjects("requested"),
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=RUNNER_REQUESTS_IN_FLIGHT,
        max_deliver=-1,  # a request waiting for its lock comes back until a runner takes it
    )
    what = "the runners' request consumer"
    await retry.until_jetstream_ready(
        lambda: reconfigure.durable_consumer(js, names.stream, names.runner_consumer, wanted),
        what,
    )
    return await retry.until_jetstream_ready(
        lambda: eventstore.durable_pull_subscription(
            js,
            names.kind_subjects("requested"),
            names.stream,
            names.runner_consumer,
            copy.copy(wanted),
        ),
        what,
    )


async def run_runner(settings: Settings, stop: asyncio.Event) -> None:
    # How the runner learns that a tool exited: without a thread per tool (see there).
    process.watch_children_by_pidfd()
    nc = await eventstore.connect(settings, "runner", on_closed_for_good="exit")
    # A flood's large line messages go on a connection of their own (publisher.BULK_BYTES).
    # A fast path only: a message it does not store in time goes on the main one (see bulk).
    bulk_nc: NATS | None = None
    bulk: BulkLane | None = None
    runner: Runner | None = None
    try:
        bulk_nc = await eventstore.connect(
            settings,
            "runner-bulk",
            on_closed_for_good="exit",
            **bulk_lane.connect_options(settings),
        )
        check_line_fits(settings.max_line_bytes, min(nc.max_payload, bulk_nc.max_payload))
        bulk = BulkLane(bulk_nc, bulk_lane.ack_timeout(settings))
        runner = Runner(settings, nc, bulk)
        # Streams and buckets before the heartbeat: its first beat writes to the runners
        # bucket, which a first start has not made yet (it warned BucketNotFoundError).
        await eventstore.ensure_topology(runner.js, runner.names, settings)
        runner_id = runner.identity.runner_id
        async with heartbeat(
            nc.jetstream(), Names(settings.prefix), settings, runner_id, runner.users_deadline
        ):
            await runner.run(stop)
    finally:
        if runner is None:  # failed before there was a runner: its stop starts now
            deadline = stopping.Deadline(settings.stop_seconds)
            users = deadline.keeping(eventstore.CLOSE_KEEP_SECONDS)
        else:
            deadline, users = runner.stop_deadlines()
        if bulk is not None:
            await bulk.close(users.left())
        # Both connections at once: nothing publishes any more, and neither waits on the other.
        closing = [eventstore.close(nc, deadline.left(eventstore.CLOSE_MOST_SECONDS))]
        if bulk_nc is not None:
            closing.append(eventstore.close(bulk_nc, deadline.left(eventstore.CLOSE_MOST_SECONDS)))
        await asyncio.gather(*closing)
