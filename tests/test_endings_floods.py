"""A job's ending, start and webhook with more foreign messages on its subjects than a read takes,
and an ending through a NATS pause (real nats-server and Postgres; the review of s18endings)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore, lastevent
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.notifier.service import Notifier
from jobrunner.services.runner.journal import JobJournal
from tests.freeze import freeze, thaw_later
from tests.system import System
from tests.tools.foreign_messages import JUNK
from tests.tools.runners import RUNNER_TYPES, start_job, wait_status
from tests.tools.status_history import terminal_statuses

pytestmark = pytest.mark.timeout(120)

# Foreign messages, none with a terminal id: more than one read takes.
FLOOD = lastevent.LOOKBACK_MOST + 44


async def flood(js: JetStreamContext, subject: str) -> None:
    acks = [await js.publish_async(subject, JUNK) for _ in range(FLOOD)]
    await asyncio.gather(*acks)


@pytest.mark.parametrize("known", [True, False], ids=["after-running", "after-unknown"])
async def test_an_ending_behind_a_flood_of_foreign_messages_is_stored(
    js: JetStreamContext, settings: Settings, known: bool
) -> None:
    """The runner's end (its ``running`` known, its condition refused) and a sweep's (read
    first): the read cut short stores the ending unconditionally, never none."""
    names = Names(settings.prefix)
    job = f"flood-{known}".lower()
    journal = JobJournal(js._nc, js, names, "runner-1")
    running = events.StatusChanged(job_id=job, status=JobStatus.RUNNING, runner_id="runner-1")
    seq = await journal.stored_at(running)
    await flood(js, names.job_kind_subject(job, "status"))
    await journal.end(job, JobStatus.COMPLETED, exit_code=0, after=seq if known else None)
    assert await terminal_statuses(js, names, job) == [f"{job}-end"]


async def test_a_pending_job_behind_a_flood_starts_and_its_queue_goes_on(
    settings: Settings, tmp_path: Path, js: JetStreamContext
) -> None:
    """The runner's reads take the newest event they found: the flooded job runs (once) and the
    job queued behind it on its lock after it."""
    names = Names(settings.prefix)
    system = System(msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES))
    await system.start_projector()
    await system.start_api()
    try:
        async with system.client() as client:
            common = {"lockfile": str(tmp_path / "lock"), "order_file": str(tmp_path / "order")}
            a = await start_job(client, "queued", label="a", seconds="0", **common)
            b = await start_job(client, "queued", label="b", seconds="0", **common)
            await flood(js, names.job_kind_subject(a, "status"))
            await system.start_runner()
            for job in (a, b):
                assert (await wait_status(client, job, "completed", "failed", timeout=30))[
                    "status"
                ] == "completed"
            assert await terminal_statuses(js, names, a) == [f"{a}-end"]
    finally:
        await system.stop()


async def test_the_notifier_takes_a_flooded_progress_subject_for_no_progress(
    settings: Settings, js: JetStreamContext
) -> None:
    names = Names(settings.prefix)
    await flood(js, names.job_kind_subject("nf1", "progress"))
    nc = await eventstore.connect(settings, "notifier")
    try:
        notifier = Notifier(settings, nc)
        assert await notifier._last("nf1", "progress", events.ProgressReported) is None
    finally:
        await eventstore.close(nc)


# Just shorter and just longer than a read's time bound (1 s) and a request's timeout (5 s).
PAUSES = [0.6, 1.5, 4.5, 6.0]


@pytest.mark.parametrize("seconds", PAUSES)
async def test_a_nats_pause_during_an_ending_that_reads_first_stores_one(
    settings: Settings, own_nats: EmbeddedNats, seconds: float
) -> None:
    """An ending whose subject's last sequence is unknown (a cancelled running job's, a sweep's,
    LEASE_LOST...) reads first: a pause that cuts the read short or outlasts a request's timeout
    still ends with the ending stored once, never "not stored"."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    names = Names(settings.prefix)
    nc = await eventstore.connect(msgspec.structs.replace(settings, nats_url=own_nats.url), "t")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    journal = JobJournal(nc, js, names, "runner-1")
    running = events.StatusChanged(job_id="p1", status=JobStatus.RUNNING, runner_id="r")
    await journal.publish(running)
    freeze(pid)
    thaw_later(seconds, pid)
    await journal.end("p1", JobStatus.CANCELLED, cancelled_by="alice")
    assert await terminal_statuses(js, names, "p1") == ["p1-end"]
    await eventstore.close(nc)


async def test_an_ending_behind_a_flood_and_a_foreign_terminal_id_takes_the_next_id(
    js: JetStreamContext, settings: Settings
) -> None:
    """A foreign message holding the terminal id, then a flood: the ending stored without a
    condition goes under the next id; ended again (a retried end), the one stored is found."""
    names = Names(settings.prefix)
    job = "flood-taken"
    subject = names.job_kind_subject(job, "status")
    journal = JobJournal(js._nc, js, names, "runner-1")
    running = events.StatusChanged(job_id=job, status=JobStatus.RUNNING, runner_id="runner-1")
    seq = await journal.stored_at(running)
    await js.publish(subject, JUNK, headers={"Nats-Msg-Id": f"{job}-end"})
    await flood(js, subject)
    for _ in range(2):
        await journal.end(job, JobStatus.COMPLETED, exit_code=0, after=seq)
    assert await terminal_statuses(js, names, job) == [f"{job}-end-2"]


@pytest.mark.parametrize("path", ["end-after-running", "start-check"])
async def test_a_slow_server_past_the_time_bound_neither_loses_nor_loops_an_ending(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """120 foreign messages (under the count bound) read 10 ms a request (a distant or busy
    server) pass the 1 s time bound: the read is cut short like any other, never an error
    retried for ever; the runner's end is stored, its start check answers."""
    names = Names(settings.prefix)
    job = f"slow-{path}"
    journal = JobJournal(js._nc, js, names, "runner-1")
    running = events.StatusChanged(job_id=job, status=JobStatus.RUNNING, runner_id="runner-1")
    seq = await journal.stored_at(running)
    acks = [await js.publish_async(names.job_kind_subject(job, "status"), JUNK) for _ in range(120)]
    await asyncio.gather(*acks)
    real = lastevent.next_stored

    async def slow_next(*args: object, **kwargs: object) -> object:
        await asyncio.sleep(0.01)
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lastevent, "next_stored", slow_next)
    if path == "end-after-running":
        await journal.end(job, JobStatus.COMPLETED, exit_code=0, after=seq)
        assert await terminal_statuses(js, names, job) == [f"{job}-end"]
    else:
        last = await journal.last_status(job)
        assert last is not None
        assert last.status == JobStatus.RUNNING


async def test_a_refused_conditional_ending_in_a_batch_is_answered_not_waited_for(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel's ending conditional on an empty status subject, refused (the job's runner
    stored its ``running`` meanwhile), is answered at once: nats-py leaves a refused pipelined
    publish unanswered, so an ack wait longer than the test's timeout would hang it."""
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", 600.0)
    names = Names(settings.prefix)
    job = "refused-cancel"
    running = events.StatusChanged(job_id=job, status=JobStatus.RUNNING, runner_id="runner-1")
    await eventstore.publish(js, names, running)
    cancel = events.CancelRequested(job_id=job, requested_by="ops")
    ending = events.StatusChanged(
        job_id=job,
        event_id=events.terminal_event_id(job),
        status=JobStatus.CANCELLED,
        cancelled_by="ops",
    )
    acks = await eventstore.publish_many_acked(js, names, [(cancel, None), (ending, 0)])
    assert acks[0] is not None
    assert acks[1] is None
