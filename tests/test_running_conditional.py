"""A runner's ``running`` is stored only if the job's status subject is as its start check read
it (``executor._publish_running``): an ending stored in between (the API's cancel of the job it
saw pending) stops the start instead of being followed by ``running``, a tool run and a second
ending. NATS paused while ``running`` is stored, and a try after one that was stored but whose
ack was lost, start the tool once, with one ``running`` and one ending."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobrunner.common import ackinbox, eventstore, lastevent
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable, slot_key
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner import executor
from tests.freeze import freeze, thaw_later
from tests.system import System
from tests.tools.dedup_window import shrink_window, window_passed
from tests.tools.foreign_messages import JUNK
from tests.tools.runners import RUNNER_TYPES, start_job, wait_status
from tests.tools.status_history import statuses

pytestmark = pytest.mark.timeout(180)

# What the hook does just before the runner's ``running`` goes out: given the test's own
# JetStream and the ``running`` event about to be published.
BeforeRunning = Callable[[JetStreamContext, events.StatusChanged], Awaitable[None]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease that outlasts the NATS pauses below: the job must not be stopped LEASE_LOST.
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=30.0)


def hook_running(
    monkeypatch: pytest.MonkeyPatch,
    js: JetStreamContext,
    before: BeforeRunning,
    *,
    every: bool = False,
) -> list[str]:
    """Runs ``before`` once, as the runner's first ``running`` is about to be published (with
    ``every``, before each of its tries): every publish through an ack inbox (the runner's,
    whatever method it uses) ends in ``_publish_waiting``. Answers the list of the event ids of
    every ``running`` sent."""
    original = ackinbox.AckInbox._publish_waiting
    sent: list[str] = []

    async def publish_waiting(
        self: ackinbox.AckInbox, subject: str, payload: bytes, headers: Any
    ) -> ackinbox.PubAck:
        if subject.endswith(".status"):
            event = codec.decode(payload)
            if isinstance(event, events.StatusChanged) and event.status == JobStatus.RUNNING:
                sent.append(event.event_id)
                if len(sent) == 1 or every:
                    await before(js, event)
        return await original(self, subject, payload, headers)

    monkeypatch.setattr(ackinbox.AckInbox, "_publish_waiting", publish_waiting)
    return sent


def freeze_on_next_read(monkeypatch: pytest.MonkeyPatch, pid: int, pause: float) -> list[str]:
    """Once a subject is put in the list answered, NATS (``pid``) is frozen for ``pause``
    seconds on the next message read of that subject (``lastevent``'s reads); the list is
    emptied then."""
    armed: list[str] = []
    original_next = lastevent.next_stored

    async def next_stored(inbox: Any, js: Any, stream: str, subject: str, seq: int) -> Any:
        if armed and subject == armed[0]:
            armed.clear()
            freeze(pid)
            thaw_later(pause, pid)
        return await original_next(inbox, js, stream, subject, seq)

    monkeypatch.setattr(lastevent, "next_stored", next_stored)
    return armed


async def start_family(client: Any, tmp_path: Path, seconds: str) -> str:
    """A job whose tool runs ``seconds`` and writes a line to ``tmp_path / "starts"`` each time
    it starts (the tests count its runs there)."""
    return await start_job(
        client,
        "family",
        pidfile=str(tmp_path / "pids"),
        count_file=str(tmp_path / "starts"),
        seconds=seconds,
    )


async def slot_given_up(js: JetStreamContext, names: Names, job_id: str) -> None:
    """Until the runner released the job's slot and forgot its run record."""
    slots = SlotTable(js, names, 5)
    async with asyncio.timeout(30):
        while True:
            if (
                await slots.current(slot_key(None, job_id, None)) is None
                and await slots.run_record(job_id) is None
            ):
                return
            await asyncio.sleep(0.05)


async def request_handled(js: JetStreamContext, names: Names) -> None:
    """Until the runners' consumer delivered a request and had every one acknowledged."""
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(NotFoundError):  # the runner has not made it yet
                info = await js.consumer_info(names.stream, names.runner_consumer)
                delivered = info.delivered.consumer_seq if info.delivered else 0
                if delivered and not info.num_pending and not info.num_ack_pending:
                    return
            await asyncio.sleep(0.05)


@pytest.fixture
async def own_system(settings: Settings, own_nats: EmbeddedNats) -> AsyncIterator[System]:
    """The API, the projector and a runner on a nats-server of the test's own."""
    running = System(msgspec.structs.replace(settings, nats_url=own_nats.url))
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def own_js(settings: Settings, own_nats: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    nc = await eventstore.connect(msgspec.structs.replace(settings, nats_url=own_nats.url), "t")
    yield nc.jetstream()
    await eventstore.close(nc)


async def test_a_cancel_ending_stored_between_the_check_and_running_stops_the_start(
    own_system: System,
    own_js: JetStreamContext,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The API's cancel of the job it saw pending stores its CANCELLED ending (on the empty
    status subject) after the runner's check read the subject and before its ``running``; the
    runner never sees the cancel itself (its cancel watch cut off) and its tool would end past
    the duplicate window (shrunk here), where the terminal id no longer keeps a second ending
    out. ``running`` is refused: the tool never runs, the job's one status is its ending, its
    slot and record are given up."""
    names = Names(settings.prefix)
    await shrink_window(own_js, names, settings)

    async def cancel_ending(js: JetStreamContext, running: events.StatusChanged) -> None:
        ending = events.StatusChanged(
            job_id=running.job_id,
            event_id=events.terminal_event_id(running.job_id),
            status=JobStatus.CANCELLED,
            cancelled_by="alice",
        )
        await eventstore.publish_acked(js, names, ending, expected_last=0)

    hook_running(monkeypatch, own_js, cancel_ending)
    count = tmp_path / "starts"
    async with own_system.client() as client:
        job_id = await start_family(client, tmp_path, seconds="2")
        await wait_status(client, job_id, "cancelled", "failed", "completed")
        await slot_given_up(own_js, names, job_id)
    assert await statuses(own_js, names, job_id) == ["cancelled"]
    assert not count.exists()


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(ackinbox.ACK_TIMEOUT - 1, id="shorter-than-the-ack-timeout"),
        pytest.param(ackinbox.ACK_TIMEOUT + 1, id="longer-than-the-ack-timeout"),
    ],
)
async def test_a_nats_pause_while_running_is_stored_starts_the_tool_once(
    own_system: System,
    own_js: JetStreamContext,
    own_nats: EmbeddedNats,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    seconds: float,
) -> None:
    """NATS frozen as ``running`` goes out: a pause shorter than the ack timeout is waited out;
    a longer one has ``running`` published again (the same id, the same condition), which
    JetStream answers as a duplicate of the copy it stored once it woke: one ``running``, the
    tool run once, one ending."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    names = Names(settings.prefix)

    async def pause(js: JetStreamContext, running: events.StatusChanged) -> None:
        freeze(pid)
        thaw_later(seconds, pid)

    sent = hook_running(monkeypatch, own_js, pause)
    count = tmp_path / "starts"
    async with own_system.client() as client:
        job_id = await start_family(client, tmp_path, seconds="0.2")
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    assert job["status"] == "completed", job
    assert await statuses(own_js, names, job_id) == ["running", "completed"]
    assert count.read_text().count("\n") == 1
    # Sent again (under its one id) only when the pause outlasted the ack timeout.
    tries = 2 if seconds > ackinbox.ACK_TIMEOUT else 1
    assert len(sent) == tries, sent
    assert len(set(sent)) == 1, sent


@pytest.mark.parametrize("past_the_window", [False, True], ids=["within", "past-the-window"])
async def test_running_tried_again_after_a_copy_was_stored_starts_the_tool_once(
    own_system: System,
    own_js: JetStreamContext,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    past_the_window: bool,
) -> None:
    """A try of ``running`` was stored but its ack lost (the copy stored here, the same id):
    the runner's try after it is a duplicate within the duplicate window; past it, it is
    refused by its own condition, and the runner finds its own ``running`` there and goes on.
    One ``running``, the tool run once, one ending."""
    names = Names(settings.prefix)
    await shrink_window(own_js, names, settings)

    async def stored_unacknowledged(js: JetStreamContext, running: events.StatusChanged) -> None:
        await eventstore.publish(js, names, running)
        if past_the_window:
            await window_passed(js, names)

    hook_running(monkeypatch, own_js, stored_unacknowledged)
    count = tmp_path / "starts"
    async with own_system.client() as client:
        job_id = await start_family(client, tmp_path, seconds="0.2")
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    assert job["status"] == "completed", job
    assert await statuses(own_js, names, job_id) == ["running", "completed"]
    assert count.read_text().count("\n") == 1


async def test_a_foreign_message_before_running_is_stepped_over(
    own_system: System,
    own_js: JetStreamContext,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A message jobrunner did not write, stored on the status subject after the check read
    it: ``running`` is refused, the read finds no status, and ``running`` is stored after it."""
    names = Names(settings.prefix)

    async def junk(js: JetStreamContext, running: events.StatusChanged) -> None:
        await js.publish(names.job_kind_subject(running.job_id, "status"), JUNK)

    hook_running(monkeypatch, own_js, junk)
    count = tmp_path / "starts"
    async with own_system.client() as client:
        job_id = await start_family(client, tmp_path, seconds="0.2")
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    assert job["status"] == "completed", job
    assert await statuses(own_js, names, job_id) == ["foreign", "running", "completed"]
    assert count.read_text().count("\n") == 1


async def test_running_refused_every_time_is_stored_without_its_condition_after_the_limit(
    own_system: System,
    own_js: JetStreamContext,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A foreign message stored on the status subject before every try of ``running``: each
    conditional try is refused, the read after it finds no status; after ``MOST_REFUSALS``
    refusals ``running`` is stored without its condition (a flood must not stop the job for
    good): stored once, the tool run once, one ending."""
    names = Names(settings.prefix)

    async def junk(js: JetStreamContext, running: events.StatusChanged) -> None:
        await js.publish(names.job_kind_subject(running.job_id, "status"), JUNK)

    sent = hook_running(monkeypatch, own_js, junk, every=True)
    count = tmp_path / "starts"
    async with own_system.client() as client:
        job_id = await start_family(client, tmp_path, seconds="0.2")
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    assert job["status"] == "completed", job
    # MOST_REFUSALS conditional tries, each refused, then the one without a condition (a
    # foreign message before it too, which it does not mind).
    tries = executor.MOST_REFUSALS + 1
    assert len(sent) == tries, sent
    assert len(set(sent)) == 1, sent
    assert await statuses(own_js, names, job_id) == ["foreign"] * tries + ["running", "completed"]
    assert count.read_text().count("\n") == 1


@pytest.mark.parametrize("pause", [0.5, 2.0], ids=["shorter-than-lookback", "longer"])
async def test_review_a_pause_during_the_refusals_read_does_not_hide_the_ending(
    pause: float,
    own_system: System,
    own_js: JetStreamContext,
    own_nats: EmbeddedNats,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Review s19running: between the check and ``running``, a foreign message, the cancel's
    ending (stored after it, as endings.store does) and another foreign message. ``running`` is
    refused; its re-read goes back from the last foreign message, and NATS pauses (2 s: shorter
    than the inbox's 5 s timeout, longer than lastevent.LOOKBACK_SECONDS) on the read's first
    request. The read is cut short by its deadline with nothing found (best_effort), which
    ``_publish_running`` takes for "only foreign messages": ``running`` is stored after the
    ending and the tool runs for a cancelled job."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    names = Names(settings.prefix)
    await shrink_window(own_js, names, settings)
    armed = freeze_on_next_read(monkeypatch, pid, pause)

    async def foreign_ending_foreign(js: JetStreamContext, running: events.StatusChanged) -> None:
        subject = names.job_kind_subject(running.job_id, "status")
        first = await js.publish(subject, JUNK)
        ending = events.StatusChanged(
            job_id=running.job_id,
            event_id=events.terminal_event_id(running.job_id),
            status=JobStatus.CANCELLED,
            cancelled_by="alice",
        )
        await eventstore.publish_acked(js, names, ending, expected_last=first.seq)
        await js.publish(subject, JUNK)
        armed.append(subject)

    hook_running(monkeypatch, own_js, foreign_ending_foreign)
    count = tmp_path / "starts"
    async with own_system.client() as client:
        job_id = await start_family(client, tmp_path, seconds="2")
        await wait_status(client, job_id, "cancelled", "failed", "completed")
        await slot_given_up(own_js, names, job_id)
    assert await statuses(own_js, names, job_id) == ["foreign", "cancelled", "foreign"]
    assert not count.exists()


@pytest.mark.parametrize(
    "pause",
    [
        pytest.param(lastevent.LOOKBACK_SECONDS / 2, id="shorter-than-the-read-bound"),
        pytest.param(lastevent.LOOKBACK_SECONDS * 2, id="longer-than-the-read-bound"),
    ],
)
async def test_an_ending_the_checks_read_missed_in_a_nats_pause_stops_the_start(
    pause: float,
    own_system: System,
    own_js: JetStreamContext,
    own_nats: EmbeddedNats,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The job's ending (a sweep's RUNNER_LOST, say: no cancel event to stop the start) is
    stored before the runner's check, between two foreign messages; NATS pauses on the check's
    first read of the status subject. Shorter than lastevent.LOOKBACK_SECONDS, the read goes on
    and finds the ending. Longer (and shorter than the inbox's timeout), it is cut short having
    read only the first foreign message: "only foreign messages found" is not "no status", the
    subject is read forwards before ``running``. Either way ``running`` is not stored after the
    ending and the tool never runs."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    names = Names(settings.prefix)
    armed = freeze_on_next_read(monkeypatch, pid, pause)
    await own_system.stop_service("runner")
    count = tmp_path / "starts"
    async with own_system.client() as client:
        job_id = await start_family(client, tmp_path, seconds="0.2")
        subject = names.job_kind_subject(job_id, "status")
        first = await own_js.publish(subject, JUNK)
        ending = events.StatusChanged(
            job_id=job_id,
            event_id=events.terminal_event_id(job_id),
            status=JobStatus.FAILED,
            error=events.ErrorInfo(code=events.ErrorCode.RUNNER_LOST, message="lost"),
        )
        await eventstore.publish_acked(own_js, names, ending, expected_last=first.seq)
        await own_js.publish(subject, JUNK)
        armed.append(subject)
        await own_system.start_runner()
        await request_handled(own_js, names)
        await slot_given_up(own_js, names, job_id)
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    assert not armed, "the check never read the status subject"
    assert job["status"] == "failed", job
    assert await statuses(own_js, names, job_id) == ["foreign", "failed", "foreign"]
    assert not count.exists()


@pytest.mark.parametrize(
    "pause",
    [
        pytest.param(ackinbox.ACK_TIMEOUT - 1, id="shorter-than-the-ack-timeout"),
        pytest.param(ackinbox.ACK_TIMEOUT + 1, id="longer-than-the-ack-timeout"),
    ],
)
async def test_a_nats_pause_during_the_read_after_a_refusal_keeps_the_job(
    pause: float,
    own_system: System,
    own_js: JetStreamContext,
    own_nats: EmbeddedNats,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A copy of ``running`` stored unacknowledged, the
    runner's try past the (shrunk) duplicate window refused by its own condition; NATS frozen on
    the read after the refusal, shorter and longer than the ack inbox's timeout. The read is
    retried, finds the runner's own ``running``: the job runs once and completes (not given back
    to end RUNNER_LOST at its redelivery without having run)."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    names = Names(settings.prefix)
    await shrink_window(own_js, names, settings)
    armed = freeze_on_next_read(monkeypatch, pid, pause)

    async def stored_unacknowledged(js: JetStreamContext, running: events.StatusChanged) -> None:
        await eventstore.publish(js, names, running)
        await window_passed(js, names)
        armed.append(names.job_kind_subject(running.job_id, "status"))

    hook_running(monkeypatch, own_js, stored_unacknowledged)
    count = tmp_path / "starts"
    async with own_system.client() as client:
        job_id = await start_family(client, tmp_path, seconds="0.2")
        job = await wait_status(client, job_id, "cancelled", "failed", "completed")
    assert not armed, "the read after the refusal never ran"
    assert job["status"] == "completed", job
    assert await statuses(own_js, names, job_id) == ["running", "completed"]
    assert count.read_text().count("\n") == 1
