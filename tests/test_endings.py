"""One ending per job, whoever stores it and however long after another: the API's cancel of a
pending job past a foreign message on its terminal id, endings more than JetStream's duplicate
window apart, and reads cut short by their bounds (see ``common/endings.py``, ``lastevent``)."""

from __future__ import annotations

import msgspec
import pytest
from nats.js import JetStreamContext

from jobrunner.common import endings, eventstore, lastevent
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import actions
from jobrunner.services.runner.journal import JobJournal
from tests.batch_actions_support import submit_batch
from tests.freeze import freeze, thaw_later
from tests.system import System
from tests.tools.dedup_window import shrink_window, window_passed
from tests.tools.foreign_messages import JUNK
from tests.tools.runners import RUNNER_TYPES, start_job, wait_status
from tests.tools.status_history import terminal_statuses

pytestmark = pytest.mark.timeout(180)


def pending(job_id: str) -> actions.Attempt:
    return actions.Attempt(id=job_id, job_type="emit", status=JobStatus.PENDING)


# 1. The API's cancel of a pending job


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The runner tests' job types; the tests that start jobs run the API and the projector
    alone (``projector_and_api``): their jobs stay pending."""
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES)


async def test_cancelling_a_pending_job_whose_terminal_id_a_foreign_message_took_ends_it(
    projector_and_api: System, js: JetStreamContext
) -> None:
    """DELETE of a pending job whose terminal id a message jobrunner did not write holds: its
    ending is stored under the next id, not dropped as a duplicate (the job would stay pending
    to every reader)."""
    names = Names(projector_and_api.settings.prefix)
    async with projector_and_api.client() as client:
        job_id = await start_job(client, "emit", lines=1)
        await js.publish(
            names.job_kind_subject(job_id, "status"),
            JUNK,
            headers={"Nats-Msg-Id": events.terminal_event_id(job_id)},
        )
        response = await client.delete(f"/api/jobs/{job_id}")
        shown = (await client.get(f"/api/jobs/{job_id}")).json()
    assert (response.status_code, response.json()["status"]) == (202, "cancelled")
    assert await terminal_statuses(js, names, job_id) == [f"{job_id}-end-2"]
    assert shown["status"] == "cancelled"


async def test_cancelling_a_pending_job_that_ended_meanwhile_answers_job_finished(
    projector_and_api: System, js: JetStreamContext
) -> None:
    """The read model still shows the job pending, but its runner's ending is stored: DELETE
    answers 409 JOB_FINISHED with that status, as once the read model shows it, and stores no
    second ending."""
    names = Names(projector_and_api.settings.prefix)
    async with projector_and_api.client() as client:
        job_id = await start_job(client, "emit", lines=1)
        # POST waits at most READ_YOUR_WRITES_TIMEOUT for the read model: on a loaded machine
        # the projector may not show the job yet, and the cancel would answer 404.
        await wait_status(client, job_id, "pending")
        await projector_and_api.stop_service("projector")  # the read model keeps showing it pending
        # As a runner ends a job it ran: its running first, then its ending.
        await eventstore.publish(
            js, names, events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING)
        )
        await eventstore.publish(
            js,
            names,
            events.StatusChanged(
                job_id=job_id,
                event_id=events.terminal_event_id(job_id),
                status=JobStatus.COMPLETED,
            ),
        )
        response = await client.delete(f"/api/jobs/{job_id}")
    assert response.status_code == 409, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["status"]) == (
        "JOB_FINISHED",
        "completed",
    )
    assert await terminal_statuses(js, names, job_id) == [f"{job_id}-end"]


async def test_a_cancel_of_a_job_seen_pending_that_started_meanwhile_stores_no_ending(
    js: JetStreamContext, settings: Settings
) -> None:
    """The read model showed the job pending, but its runner stored ``running`` since: the
    cancel stores no ending (the runner ends the job, with its tool's exit code) and learns
    that the job runs."""
    names = Names(settings.prefix)
    await eventstore.publish(
        js, names, events.StatusChanged(job_id="started1", status=JobStatus.RUNNING)
    )
    batch = actions.cancel_events(pending("started1"), "alice", None)
    _, ended = await endings.publish_with_endings(js, names, batch)
    outcome = ended["started1"]
    assert not outcome.stored
    assert outcome.first is not None
    assert outcome.first.status == JobStatus.RUNNING
    assert await terminal_statuses(js, names, "started1") == []


async def test_a_batch_fail_ends_a_pending_job_whose_terminal_id_a_foreign_message_took(
    projector_and_api: System, js: JetStreamContext
) -> None:
    """A batch's fail cancels its pending jobs in one pipeline; the one whose terminal id a
    foreign message holds is ended under the next id, the others under their own."""
    names = Names(projector_and_api.settings.prefix)
    async with projector_and_api.client() as client:
        batch_id, job_ids = await submit_batch(client, [("emit", {"lines": 1})] * 3)
        await js.publish(
            names.job_kind_subject(job_ids[1], "status"),
            JUNK,
            headers={"Nats-Msg-Id": events.terminal_event_id(job_ids[1])},
        )
        response = await client.post(f"/api/batches/{batch_id}/fail")
    assert response.status_code == 202, response.text
    assert [await terminal_statuses(js, names, job_id) for job_id in job_ids] == [
        [f"{job_ids[0]}-end"],
        [f"{job_ids[1]}-end-2"],
        [f"{job_ids[2]}-end"],
    ]


# 2. Endings further apart than the duplicate window


async def test_a_runners_end_long_after_a_cancel_of_the_pending_job_is_not_a_second_ending(
    js: JetStreamContext, settings: Settings
) -> None:
    """The cancel of a pending job stores its end; the runner that passed its check just before
    stores ``running`` and stops its tool only after the duplicate window (a tool deaf to
    SIGTERM for minutes): its end is not stored as a second one."""
    names = Names(settings.prefix)
    await shrink_window(js, names, settings)
    for event in actions.cancel_events(pending("late1"), "alice", None):
        await eventstore.publish(js, names, event)
    await eventstore.publish(
        js, names, events.StatusChanged(job_id="late1", status=JobStatus.RUNNING)
    )
    await window_passed(js, names)
    await JobJournal(js._nc, js, names, "runner-1").end(
        "late1", JobStatus.CANCELLED, cancelled_by="alice"
    )
    assert await terminal_statuses(js, names, "late1") == ["late1-end"]


async def test_an_end_past_the_window_after_a_fallback_id_is_not_a_second_ending(
    js: JetStreamContext, settings: Settings
) -> None:
    """A foreign message took the terminal id; one runner stored its end under the next id;
    another ends the job once the foreign message's id is out of the window (so the terminal id
    would be taken as new): it finds the stored end."""
    names = Names(settings.prefix)
    await shrink_window(js, names, settings)
    subject = names.job_kind_subject("late2", "status")
    await js.publish(subject, JUNK, headers={"Nats-Msg-Id": events.terminal_event_id("late2")})
    await eventstore.publish(
        js, names, events.StatusChanged(job_id="late2", status=JobStatus.RUNNING)
    )
    first, second = (JobJournal(js._nc, js, names, r) for r in ("runner-1", "runner-2"))
    await first.end("late2", JobStatus.COMPLETED, exit_code=0)
    await window_passed(js, names)
    lost = events.ErrorInfo(code="RUNNER_LOST", message="lost")
    await second.end("late2", JobStatus.FAILED, error=lost)
    assert await terminal_statuses(js, names, "late2") == ["late2-end-2"]


async def test_a_runner_back_after_the_window_does_not_end_a_job_declared_lost(
    js: JetStreamContext, settings: Settings
) -> None:
    """A runner cut off from NATS past its lease and the duplicate window: another declared
    the job lost meanwhile. Its own end, published at once after its ``running`` (no read), is
    refused by JetStream (the subject holds more than that) and finds the stored end."""
    names = Names(settings.prefix)
    await shrink_window(js, names, settings)
    cut_off, sweeper = (JobJournal(js._nc, js, names, r) for r in ("runner-1", "runner-2"))
    running_seq = await cut_off.stored_at(
        events.StatusChanged(job_id="late3", status=JobStatus.RUNNING, runner_id="runner-1")
    )
    lost = events.ErrorInfo(code="RUNNER_LOST", message="lost")
    await sweeper.end("late3", JobStatus.FAILED, error=lost)
    await window_passed(js, names)
    lease_lost = events.ErrorInfo(code="LEASE_LOST", message="lease lost")
    await cut_off.end("late3", JobStatus.FAILED, error=lease_lost, after=running_seq)
    assert await terminal_statuses(js, names, "late3") == ["late3-end"]


async def test_a_runners_end_after_its_running_is_stored_without_a_read(
    js: JetStreamContext, settings: Settings
) -> None:
    """The happy path: a runner's end right after its ``running`` is one publish, no read of
    the status subject (a read would be a direct message-get: none is sent)."""
    names = Names(settings.prefix)
    journal = JobJournal(js._nc, js, names, "runner-1")
    running_seq = await journal.stored_at(
        events.StatusChanged(job_id="fast1", status=JobStatus.RUNNING, runner_id="runner-1")
    )
    sent: list[str] = []
    publish = js._nc.publish

    async def recorded(subject: str, *args: object, **kwargs: object) -> None:
        sent.append(subject)
        await publish(subject, *args, **kwargs)  # type: ignore[arg-type]

    js._nc.publish = recorded  # type: ignore[method-assign]
    try:
        await journal.end("fast1", JobStatus.COMPLETED, exit_code=0, after=running_seq)
    finally:
        js._nc.publish = publish  # type: ignore[method-assign]
    assert sent == [names.job_kind_subject("fast1", "status")]
    assert await terminal_statuses(js, names, "fast1") == ["fast1-end"]


# 3. Reads cut short


async def test_a_read_back_cut_short_in_a_stretch_is_incomplete_not_an_older_event(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stretch read back from the newest message holds an older readable status, then more
    foreign messages than the bounds let the read take, then the newest readable status: the
    read does not answer the older status as the newest; it says it does not know."""
    monkeypatch.setattr(lastevent, "LOOKBACK_MOST", 40)
    names = Names(settings.prefix)
    subject = names.job_kind_subject("cut1", "status")

    async def junk(count: int) -> None:
        for _ in range(count):
            await js.publish(subject, JUNK)

    await junk(lastevent.FIRST_MOST)  # the subject's first messages, read first
    running = events.StatusChanged(job_id="cut1", status=JobStatus.RUNNING)
    await eventstore.publish(js, names, running)  # where the first stretch back starts
    await junk(50)  # more than the read has left
    ending = events.StatusChanged(job_id="cut1", status=JobStatus.COMPLETED)
    await eventstore.publish(js, names, ending)
    await junk(lastevent.FIRST_STRETCH - 52)  # the newest message among them
    with pytest.raises(lastevent.ReadIncomplete):
        await lastevent.last_readable(js, names.stream, subject, events.StatusChanged, "cut1")
    monkeypatch.setattr(lastevent, "LOOKBACK_MOST", 256)  # bounds that let it read it all
    found = await lastevent.last_readable(js, names.stream, subject, events.StatusChanged, "cut1")
    assert found is not None
    assert found[1] == ending


async def test_a_subject_of_junk_past_the_bounds_is_incomplete_not_empty(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More foreign messages than a read back takes, a readable event among those it did not
    read: "none" is not the answer either."""
    monkeypatch.setattr(lastevent, "LOOKBACK_MOST", 20)
    names = Names(settings.prefix)
    subject = names.job_kind_subject("cut2", "status")
    for _ in range(lastevent.FIRST_MOST):
        await js.publish(subject, JUNK)
    await eventstore.publish(
        js, names, events.StatusChanged(job_id="cut2", status=JobStatus.RUNNING)
    )
    for _ in range(30):
        await js.publish(subject, JUNK)
    with pytest.raises(lastevent.ReadIncomplete):
        await lastevent.last_readable(js, names.stream, subject, events.StatusChanged, "cut2")


# NATS paused while a pending job's cancel waits for its acks


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(eventstore.ACK_WAIT_SECONDS - 1, id="shorter-than-the-ack-wait"),
        pytest.param(eventstore.ACK_WAIT_SECONDS + 1, id="longer-than-the-ack-wait"),
    ],
)
async def test_a_nats_pause_during_a_pending_jobs_cancel_stores_one_ending(
    settings: Settings, own_nats: EmbeddedNats, seconds: float
) -> None:
    """NATS frozen as the cancel of a pending job is published: a pause shorter than the
    pipeline's ack wait is waited out; a longer one has the events published again, the ending
    with its condition (an empty status subject), which the first copy, stored meanwhile, no
    longer meets: the cancel finds its own ending, stored once, and says so."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    names = Names(settings.prefix)
    nc = await eventstore.connect(msgspec.structs.replace(settings, nats_url=own_nats.url), "t")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    freeze(pid)
    thaw_later(seconds, pid)
    batch = actions.cancel_events(pending("paused1"), "alice", None)
    _, ended = await endings.publish_with_endings(js, names, batch)
    outcome = ended["paused1"]
    assert outcome.stored or (
        outcome.first is not None and outcome.first.status == JobStatus.CANCELLED
    )
    assert await terminal_statuses(js, names, "paused1") == ["paused1-end"]
    await eventstore.close(nc)
