"""Messages jobrunner did not write on a job's subjects (junk, a newer version's event, another
kind, another job's event): every reader of a job's latest event skips them and reads the newest
event before them, so a finished job stays finished and nothing answers a server error."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import strategies as st
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobrunner.common import ackinbox, batchids, eventstore, lastevent
from jobrunner.common.jobtypes import load_job_types
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import actions
from jobrunner.services.api.batchpublish import BatchEvents, publish_batch
from jobrunner.services.api.batchrequest import plan_batch
from jobrunner.services.runner.journal import JobJournal
from tests.batch_submit_support import batch_body
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.freeze import freeze, thaw, thaw_later
from tests.history_support import job_events, publish, publisher, reading_system, wait_projected
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.drawn_examples import examples
from tests.tools.foreign_messages import JUNK
from tests.tools.runners import RUNNER_TYPES, start_job, wait_status
from tests.tools.status_history import terminal_statuses
from tests.webhook_receiver import running_receiver
from tests.webhook_support import webhook_settings

pytestmark = pytest.mark.timeout(180)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
TYPES = [t.__struct_config__.tag for t in events.EVENT_TYPES]


def hostile_bodies(job_id: str) -> st.SearchStrategy[bytes]:
    """What a foreign publisher might store on a job's status subject, other than a StatusChanged
    of that job: bytes, any JSON, event-shaped objects of every type (a future one too) with any
    values, another job's ending, deep nesting, a body near the server's limit."""
    event_like = st.fixed_dictionaries(
        {"type": st.sampled_from([*TYPES, "StatusChangedV9"]) | json_values},
        optional={
            "job_id": st.sampled_from([job_id, "someone-else"]) | json_values,
            "status": st.sampled_from([s.value for s in JobStatus]) | json_values,
            "batch_id": st.just("b1"),
            "lines": json_values,
            "current": json_values,
        },
    )
    shaped = (json_values | event_like).map(lambda v: json.dumps(v).encode())
    return st.one_of(
        st.just(b""),
        st.binary(max_size=64),
        shaped,
        st.just(b"[" * 50_000),
        st.just(b'{"type": "StatusChanged", "job_id": "' + b"x" * 900_000 + b'"}'),
        st.just(b"\x82\xa4type\xadStatusChanged"),  # msgpack, not JSON
    ).filter(
        lambda body: (
            not isinstance(
                lastevent.readable(body, events.StatusChanged, job_id), events.StatusChanged
            )
        )
    )


async def test_generated_foreign_messages_never_hide_a_jobs_ending(
    js: JetStreamContext, settings: Settings
) -> None:
    """Whatever follows a job's ending on its status subject, the ending is what is read."""
    names = Names(settings.prefix)
    ending = events.StatusChanged(
        job_id="j1", event_id=events.terminal_event_id("j1"), status=JobStatus.COMPLETED
    )
    ended_at = await eventstore.publish(js, names, ending)
    subject = names.job_kind_subject("j1", "status")
    for body in examples(hostile_bodies("j1"), 60):
        await js.publish(subject, body)
        assert await lastevent.last_readable(
            js, names.stream, subject, events.StatusChanged, "j1"
        ) == (ended_at, ending), body[:200]


async def test_a_subject_with_only_foreign_messages_has_no_event(
    js: JetStreamContext, settings: Settings
) -> None:
    """A job whose status subject holds nothing jobrunner wrote has no status."""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("j2", "status")
    await js.publish(subject, JUNK)
    await js.publish(
        subject, codec.encode(events.StatusChanged(job_id="other", status=JobStatus.COMPLETED))
    )
    assert (
        await lastevent.last_readable(js, names.stream, subject, events.StatusChanged, "j2") is None
    )


async def test_the_newest_readable_event_before_foreign_ones_is_read(
    js: JetStreamContext, settings: Settings
) -> None:
    """Readable events with foreign messages between and after them: the newest readable one."""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("j3", "status")
    running = events.StatusChanged(job_id="j3", status=JobStatus.RUNNING)
    ending = events.StatusChanged(job_id="j3", status=JobStatus.FAILED)
    await eventstore.publish(js, names, running)
    await js.publish(subject, JUNK)
    at = await eventstore.publish(js, names, ending)
    for _ in range(200):  # other jobs' events between: the stretch read back grows
        await js.publish(names.job_kind_subject("busy", "status"), JUNK)
    for _ in range(3):
        await js.publish(subject, JUNK)
    found = await lastevent.last_readable(js, names.stream, subject, events.StatusChanged, "j3")
    assert found == (at, ending)


async def test_a_flood_of_foreign_messages_after_an_ending_still_reads_the_ending(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More foreign messages after a job's ending than a read back takes: the subject's first
    messages are read, and the ending is found there."""
    monkeypatch.setattr(lastevent, "LOOKBACK_MOST", 20)
    names = Names(settings.prefix)
    subject = names.job_kind_subject("j4", "status")
    ending = events.StatusChanged(job_id="j4", status=JobStatus.COMPLETED)
    at = await eventstore.publish(js, names, ending)
    for _ in range(60):
        await js.publish(subject, JUNK)
    found = await lastevent.last_readable(js, names.stream, subject, events.StatusChanged, "j4")
    assert found == (at, ending)


# The runner


async def idle(js: JetStreamContext, names: Names, consumer: str, timeout: float = 60) -> None:
    """Until ``consumer`` has every message delivered and acknowledged."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                info = await js.consumer_info(names.stream, consumer)
            except NotFoundError:  # its service has not made it yet
                info = None
            if (
                info
                and not info.num_pending
                and not info.num_ack_pending
                and info.delivered.stream_seq
            ):
                return
            await asyncio.sleep(0.05)


@pytest.fixture
async def runner_only(settings: Settings) -> AsyncIterator[System]:
    running = System(msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES))
    await running.start_runner()
    yield running
    await running.stop()


@pytest.mark.parametrize(
    "foreign",
    [JUNK, b"", b'{"type":"StatusChangedV9","job_id":"done1"}', b'{"type":"LineLogged"}'],
    ids=["junk", "empty", "future-type", "other-kind"],
)
async def test_a_finished_job_is_not_run_again_when_a_foreign_message_follows_its_end(
    runner_only: System, js: JetStreamContext, foreign: bytes
) -> None:
    """A job that completed, its request delivered again after a foreign message landed on its
    status subject: the runner reads the ending before it and does not run the job."""
    names = Names(runner_only.settings.prefix)
    done = [
        events.JobRequested(job_id="done1", job_type="emit", parameters={"lines": 3}),
        events.StatusChanged(job_id="done1", status=JobStatus.RUNNING),
        events.StatusChanged(
            job_id="done1", event_id=events.terminal_event_id("done1"), status=JobStatus.COMPLETED
        ),
    ]
    await eventstore.publish_many(js, names, done)
    await js.publish(names.job_kind_subject("done1", "status"), foreign)
    await idle(js, names, names.runner_consumer)
    info = await js.stream_info(names.stream, subjects_filter=names.job_subjects("done1"))
    assert info.state.subjects == {
        names.job_kind_subject("done1", "requested"): 1,
        names.job_kind_subject("done1", "status"): 3,  # no second "running", no lines
    }


# The API


@pytest.fixture
async def reading(settings: Settings) -> AsyncIterator[System]:
    async with reading_system(settings) as system:
        yield system


async def test_a_job_stream_with_junk_after_its_end_ends_instead_of_a_server_error(
    reading: System,
) -> None:
    """GET /api/jobs/{id}/stream of a finished job whose status subject ends in junk sends
    the job's history and its ending, as for any finished job."""
    settings = reading.settings
    last = await publish(settings, job_events("sj", status=JobStatus.COMPLETED, lines=["a"]))
    await wait_projected(settings, last)
    async with publisher(settings) as js:
        await js.publish(Names(settings.prefix).job_kind_subject("sj", "status"), JUNK)
    async with reading.client() as client:
        stream = await read_stream(client, "/api/jobs/sj/stream")
    assert stream.events[-1].event == "done"
    assert json.loads(stream.events[-1].data)["status"] == "completed"


@pytest.fixture
async def external(settings: Settings) -> AsyncIterator[System]:
    running = System(msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES))
    await running.start()
    yield running
    await running.stop()


async def test_a_finished_external_job_refuses_reports_and_files_after_a_foreign_status(
    external: System,
) -> None:
    """An external job that completed refuses its worker's next report and file with 409
    JOB_FINISHED, also once a message jobrunner did not write follows its ending."""
    settings = external.settings
    async with external.client() as client, worker_client(external.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        await job.report(worker, result={"pages": 1})
        await wait_status(client, job.id, "completed")
        async with publisher(settings) as js:
            await js.publish(Names(settings.prefix).job_kind_subject(job.id, "status"), JUNK)
        report = await job.report(worker, progress=20)
        upload = await worker.put(
            f"{job.path}/artifacts/late.bin",
            content=b"x",
            headers={"Authorization": f"Bearer {job.token}"},
        )
    assert (report.status_code, report.json()["error"]["code"]) == (409, "JOB_FINISHED")
    assert (upload.status_code, upload.json()["error"]["code"]) == (409, "JOB_FINISHED")


async def test_another_jobs_ending_on_a_jobs_subject_does_not_end_its_stream(
    reading: System,
) -> None:
    """A follower of a running job keeps following when an ending naming another job lands on
    the job's status subject: its next line and its own ending still arrive."""
    settings = reading.settings
    names = Names(settings.prefix)
    last = await publish(settings, job_events("run1", status=JobStatus.RUNNING))
    await wait_projected(settings, last)
    foreign = events.StatusChanged(job_id="else", status=JobStatus.FAILED)
    line = events.LineLogged(
        job_id="run1", lines=[events.LogLine(1, "stdout", "INFO", events.utcnow(), "after")]
    )
    ending = events.StatusChanged(
        job_id="run1", event_id=events.terminal_event_id("run1"), status=JobStatus.COMPLETED
    )
    async with reading.client() as client:
        following = asyncio.ensure_future(read_stream(client, "/api/jobs/run1/stream"))
        async with publisher(settings) as js:
            await js.publish(names.job_kind_subject("run1", "status"), codec.encode(foreign))
            await eventstore.publish_many(js, names, [line, ending])
        stream = await asyncio.wait_for(following, 30)
    assert [e.event for e in stream.events].count("done") == 1
    assert any("after" in e.data for e in stream.events)
    assert json.loads(stream.events[-1].data)["status"] == "completed"


async def test_another_jobs_ending_on_a_jobs_status_subject_notifies_no_one(
    settings: Settings, js: JetStreamContext
) -> None:
    """An ending naming job b1 stored on job a1's status subject sends no webhook for b1 (nor
    a1); a real ending after it is delivered as usual."""
    names = Names(settings.prefix)
    system = System(webhook_settings(settings))
    await system.start_notifier()
    try:
        async with running_receiver() as receiver:
            hook = events.WebhookTarget(url=receiver.url)
            await eventstore.publish_many(
                js,
                names,
                [
                    events.JobRequested(job_id=job_id, job_type="emit", webhook=hook)
                    for job_id in ("a1", "b1", "c1")
                ],
            )
            forged = events.StatusChanged(job_id="b1", status=JobStatus.COMPLETED)
            await js.publish(names.job_kind_subject("a1", "status"), codec.encode(forged))
            await eventstore.publish(
                js, names, events.StatusChanged(job_id="c1", status=JobStatus.COMPLETED)
            )
            await receiver.wait_for(1)
            await idle(js, names, names.notifier_consumer)
            assert [json.loads(r.body)["job_id"] for r in receiver.received] == ["c1"]
    finally:
        await system.stop()


KINDS = sorted({*lastevent.JOB_EVENT_OF_KIND, "unknown"})
BATCH_KINDS = ["requested", "sealed", "restarted", "failed", "archived"]


def anywhere(job_id: str, batch_id: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """A hostile body on any subject of a job or of its batch."""
    job = st.tuples(st.sampled_from(KINDS).map(lambda k: f"job.{job_id}.{k}"), hostile(job_id))
    batch = st.tuples(
        st.sampled_from(BATCH_KINDS).map(lambda k: f"batch.{batch_id}.{k}"), hostile(job_id)
    )
    return job | batch


def hostile(job_id: str) -> st.SearchStrategy[bytes]:
    return hostile_bodies(job_id) | st.builds(
        lambda t, body: json.dumps(
            {**body, "type": t, "job_id": job_id, "batch_id": "fb"}
        ).encode(),
        st.sampled_from(TYPES),
        st.dictionaries(
            st.sampled_from(
                [
                    "status",
                    "lines",
                    "total_jobs",
                    "job_ids",
                    "webhook",
                    "current",
                    "attempt_of",
                    "lock",
                ]
            ),
            json_values,
            max_size=3,
        ),
    )


async def test_generated_foreign_messages_on_every_subject_never_answer_a_server_error(
    reading: System,
) -> None:
    """Generated messages on every subject of a job and of its batch: every page and endpoint
    of the job answers without a server error, and the projector keeps up."""
    settings = reading.settings
    names = Names(settings.prefix)
    await publish(settings, job_events("fj", status=JobStatus.RUNNING, lines=["a", "b"]))
    paths = [
        "/api/jobs/fj",
        "/api/jobs/fj/events",
        "/api/jobs/fj/logs",
        "/api/jobs/fj/artifacts",
        "/api/jobs/fj/webhooks",
        "/api/jobs",
        "/api/batches",
        "/api/batches/fb",
        "/jobs/fj",
        "/batches/fb",
        "/health",
    ]
    drawn = examples(anywhere("fj", "fb"), 150)
    async with publisher(settings) as js, reading.client() as client:
        for start in range(0, len(drawn), 30):
            last = 0
            for subject, body in drawn[start : start + 30]:
                last = (await js.publish(f"{settings.prefix}.{subject}", body)).seq
            await wait_projected(settings, last)
            for path in paths:
                response = await client.get(path)
                assert response.status_code < 500, (path, response.text)
            async with client.stream(
                "GET", "/api/jobs/stream", headers={"Last-Event-ID": "0"}
            ) as updates:
                assert updates.status_code == 200
                await read_for(updates, seconds=1.0)
        ending = events.StatusChanged(
            job_id="fj", event_id=events.terminal_event_id("fj"), status=JobStatus.COMPLETED
        )
        await eventstore.publish(js, names, ending)
        stream = await read_stream(client, "/api/jobs/fj/stream")
    assert stream.events[-1].event == "done"


async def read_for(response: httpx.Response, seconds: float) -> None:
    """Read a stream that does not end for ``seconds`` (its frames are the server's work)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for _ in response.aiter_bytes():
                pass


async def test_a_resumed_batch_submission_publishes_what_foreign_messages_stand_in_for(
    js: JetStreamContext, settings: Settings
) -> None:
    """A batch submission sent again after it stopped half-way publishes its request, its jobs
    and its seal, although messages jobrunner did not write sit on their subjects."""
    names = Names(settings.prefix)
    plan = plan_batch(
        batch_body(("emit", {"lines": 1}), ("emit", {"lines": 2})),
        load_job_types(RUNNER_TYPES),
        settings.batch_max_jobs,
    )
    batch = BatchEvents(plan, batchids.new_batch_id(), "test-admin")
    for subject in (
        names.batch_kind_subject(batch.batch_id, "sealed"),
        names.batch_kind_subject(batch.batch_id, "requested"),
        names.job_kind_subject(batch.job_ids[1], "requested"),
    ):
        await js.publish(subject, JUNK)
    await eventstore.publish(js, names, batch.jobs[0])  # stored before the submission stopped
    slots = SlotTable(js, names, settings.lease_ttl_seconds)
    sealed_seq = await publish_batch(js, names, slots, batch, resumed=True)
    found = [
        await lastevent.last_readable(js, names.stream, subject, kind, owner)
        for subject, kind, owner in [
            (
                names.batch_kind_subject(batch.batch_id, "requested"),
                events.BatchRequested,
                batch.batch_id,
            ),
            (
                names.job_kind_subject(batch.job_ids[1], "requested"),
                events.JobRequested,
                batch.job_ids[1],
            ),
            (
                names.batch_kind_subject(batch.batch_id, "sealed"),
                events.BatchSealed,
                batch.batch_id,
            ),
        ]
    ]
    assert [f[1] if f else None for f in found] == [batch.requested, batch.jobs[1], batch.sealed]
    assert found[2] is not None
    assert found[2][0] == sealed_seq


async def test_a_foreign_message_taking_a_jobs_terminal_id_does_not_swallow_its_end(
    runner_only: System, js: JetStreamContext
) -> None:
    """A message jobrunner did not write, stored with the job's terminal event id before the
    job ends, makes JetStream drop the runner's ending as a duplicate: the runner notices that
    no readable ending is stored and stores its ending under an id of its own."""
    names = Names(runner_only.settings.prefix)
    subject = names.job_kind_subject("pre1", "status")
    await js.publish(subject, JUNK, headers={"Nats-Msg-Id": events.terminal_event_id("pre1")})
    await eventstore.publish(
        js, names, events.JobRequested(job_id="pre1", job_type="emit", parameters={"lines": 1})
    )
    ending = await status_when(js, names, "pre1", terminal=True)
    assert ending.status == JobStatus.COMPLETED


async def test_an_external_jobs_final_report_is_stored_when_a_foreign_message_took_its_id(
    external: System,
) -> None:
    """A foreign message stored with an external job's terminal event id does not swallow its
    worker's final report: the job completes, and the same report sent again is a duplicate."""
    settings = external.settings
    names = Names(settings.prefix)
    async with external.client() as client, worker_client(external.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        async with publisher(settings) as js:
            await js.publish(
                names.job_kind_subject(job.id, "status"),
                JUNK,
                headers={"Nats-Msg-Id": events.terminal_event_id(job.id)},
            )
        final = await job.report(worker, result={"pages": 1}, report_id="r9")
        again = await job.report(worker, result={"pages": 1}, report_id="r9")
        await wait_status(client, job.id, "completed")
    assert (final.status_code, final.json()["status"]) == (200, "completed")
    assert (again.status_code, again.json()["duplicate"]) == (200, True)


async def status_when(
    js: JetStreamContext, names: Names, job_id: str, terminal: bool
) -> events.StatusChanged:
    """Until the job's readable status is any status (or an ending, ``terminal``); that one."""
    subject = names.job_kind_subject(job_id, "status")
    async with asyncio.timeout(60):
        while True:
            found = await lastevent.last_readable(
                js, names.stream, subject, events.StatusChanged, job_id
            )
            if found is not None and (found[1].status.is_terminal or not terminal):
                return found[1]
            await asyncio.sleep(0.05)


async def test_a_cancel_naming_a_running_job_on_another_jobs_subject_cancels_nothing(
    runner_only: System, js: JetStreamContext
) -> None:
    """A CancelRequested for a running job stored on another job's cancel subject (not written
    by jobrunner) does not stop it: the job completes."""
    names = Names(runner_only.settings.prefix)
    await eventstore.publish(
        js,
        names,
        events.JobRequested(
            job_id="long1", job_type="emit", parameters={"lines": 40, "interval": "0.05"}
        ),
    )
    await status_when(js, names, "long1", terminal=False)
    forged = events.CancelRequested(job_id="long1", requested_by="mallory")
    await js.publish(names.job_kind_subject("other1", "cancel"), codec.encode(forged))
    assert (await status_when(js, names, "long1", terminal=True)).status == JobStatus.COMPLETED


async def test_another_jobs_ending_on_an_external_jobs_subject_keeps_its_lock_held(
    external: System,
) -> None:
    """An ending naming another job, stored on a running external job's status subject, does
    not end the job for its runner: a tool sharing its lock starts only once it really ended."""
    settings = external.settings
    async with external.client() as client, worker_client(external.base_url) as worker:
        job = await start_external(client, "locked")
        await job.report_when_held(worker, progress=5)
        tool = await start_job(client, "locked_tool")
        forged = events.StatusChanged(job_id="someone-else", status=JobStatus.COMPLETED)
        async with publisher(settings) as js:
            subject = Names(settings.prefix).job_kind_subject(job.id, "status")
            await js.publish(subject, codec.encode(forged))
        for _ in range(3):  # the job keeps reporting; the tool keeps waiting
            await job.report(worker, progress=10)
            assert (await client.get(f"/api/jobs/{tool}")).json()["status"] == "pending"
            await asyncio.sleep(0.3)
        await job.report(worker, result={})
        ended = await wait_status(client, job.id, "completed")
        ran = await wait_status(client, tool, "completed", "failed")
    assert ran["started_at"] >= ended["finished_at"]


# One ending per job, whoever races to end it


async def test_a_runners_end_after_a_cancel_of_the_pending_job_is_not_a_second_ending(
    js: JetStreamContext, settings: Settings
) -> None:
    """The race DELETE of a pending job is built for: its CANCELLED stored under the terminal id,
    then the runner's RUNNING (it passed its check just before). The runner's own end is dropped
    as a duplicate although the newest status is RUNNING: no second ending."""
    names = Names(settings.prefix)
    journal = JobJournal(js._nc, js, names, "runner-1")
    await eventstore.publish(js, names, events.JobRequested(job_id="race1", job_type="emit"))
    for event in actions.cancel_events(pending("race1"), "alice", None):
        await eventstore.publish(js, names, event)
    await eventstore.publish(
        js, names, events.StatusChanged(job_id="race1", status=JobStatus.RUNNING)
    )
    await journal.end("race1", JobStatus.COMPLETED, exit_code=0)
    assert await terminal_statuses(js, names, "race1") == ["race1-end"]


async def test_two_parties_ending_a_job_past_a_foreign_terminal_id_store_one_ending(
    js: JetStreamContext, settings: Settings
) -> None:
    """A foreign message took the terminal id; the runner finishing the job and another runner
    declaring it lost end it at once: both fall back to the same next id, one ending is kept."""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("race2", "status")
    await js.publish(subject, JUNK, headers={"Nats-Msg-Id": events.terminal_event_id("race2")})
    await eventstore.publish(
        js, names, events.StatusChanged(job_id="race2", status=JobStatus.RUNNING)
    )
    first, second = (JobJournal(js._nc, js, names, r) for r in ("runner-1", "runner-2"))
    lost = events.ErrorInfo(code="RUNNER_LOST", message="lost")
    await asyncio.gather(
        first.end("race2", JobStatus.COMPLETED, exit_code=0),
        second.end("race2", JobStatus.FAILED, error=lost),
    )
    assert await terminal_statuses(js, names, "race2") == ["race2-end-2"]


async def test_an_ending_is_found_in_a_few_requests_whatever_foreign_messages_follow(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of foreign messages after a job's ending: the ending is read among the subject's
    first messages, in a handful of requests, not one per foreign message; a subject holding
    only foreign messages costs a bounded read, by count and by bytes."""
    names = Names(settings.prefix)
    requests = 0
    nc = js._nc
    sent = nc.publish

    async def counted(*args: object, **kwargs: object) -> None:
        nonlocal requests
        requests += 1
        await sent(*args, **kwargs)  # type: ignore[arg-type]

    ending = events.StatusChanged(job_id="f1", status=JobStatus.COMPLETED)
    at = await eventstore.publish(js, names, ending)
    flooded = names.job_kind_subject("f1", "status")
    await asyncio.gather(*(js.publish(flooded, JUNK) for _ in range(600)))
    only_junk = names.job_kind_subject("f2", "status")
    await asyncio.gather(*(js.publish(only_junk, JUNK) for _ in range(600)))
    big = names.job_kind_subject("f3", "status")
    for _ in range(80):
        await js.publish(big, b"{" + b"x" * 64_000)

    monkeypatch.setattr(nc, "publish", counted)
    found = await lastevent.last_readable(js, names.stream, flooded, events.StatusChanged, "f1")
    assert found == (at, ending)
    assert requests <= 10  # the newest, then the subject's first messages
    for subject, owner, most in [
        (only_junk, "f2", lastevent.LOOKBACK_MOST),
        (big, "f3", lastevent.LOOKBACK_BYTES // 64_000 + 1),
    ]:
        requests = 0
        # Not "none": the bounds stopped the read before it knew (lastevent.ReadIncomplete).
        with pytest.raises(lastevent.ReadIncomplete):
            await lastevent.last_readable(js, names.stream, subject, events.StatusChanged, owner)
        assert requests <= most + 1, subject


async def test_a_nats_blip_after_a_dropped_ending_is_retried_and_end_returns(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS stops answering right after the runner's end was dropped as a duplicate: the look
    for the ending stored first is retried with the publish, and end() returns (its caller
    then releases the job's lock) instead of raising."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        names = Names(settings.prefix)
        nc = await eventstore.connect(msgspec.structs.replace(settings, nats_url=server.url), "t")
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        for event in actions.cancel_events(pending("blip"), None, None):
            await eventstore.publish(js, names, event)
        running = events.StatusChanged(job_id="blip", status=JobStatus.RUNNING)
        running_seq = await eventstore.publish(js, names, running)
        published = eventstore.publish_acked
        paused = False

        async def then_pause(*args: Any, **kwargs: Any) -> Any:
            nonlocal paused
            ack = await published(*args, **kwargs)
            if ack.duplicate and not paused:
                paused = True
                assert server.proc is not None
                freeze(server.proc.pid)
                resume = ackinbox.ACK_TIMEOUT + 1
                thaw_later(resume, server.proc.pid)
            return ack

        monkeypatch.setattr(eventstore, "publish_acked", then_pause)
        await JobJournal(nc, js, names, "runner-1").end(
            "blip", JobStatus.COMPLETED, exit_code=0, after=running_seq
        )
        assert paused
        assert await terminal_statuses(js, names, "blip") == ["blip-end"]
        await eventstore.close(nc)
    finally:
        assert server.proc is not None
        thaw(server.proc.pid)
        server.stop()


def pending(job_id: str) -> actions.Attempt:
    return actions.Attempt(id=job_id, job_type="emit", status=JobStatus.PENDING)


# Foreign requests


async def test_a_request_that_does_not_decode_or_names_another_job_is_dropped(
    runner_only: System, js: JetStreamContext
) -> None:
    """Junk on a job's request subject, and a request naming another job: each is terminated
    (never delivered again for ever, holding a place of max_ack_pending), and nothing runs."""
    names = Names(runner_only.settings.prefix)
    await js.publish(names.job_kind_subject("junkreq", "requested"), JUNK)
    victim = events.JobRequested(job_id="victim", job_type="emit", parameters={"lines": 1})
    await js.publish(names.job_kind_subject("decoy", "requested"), codec.encode(victim))
    await idle(js, names, names.runner_consumer)
    info = await js.stream_info(names.stream, subjects_filter=f"{names.prefix}.job.>")
    assert info.state.subjects == {
        names.job_kind_subject("junkreq", "requested"): 1,
        names.job_kind_subject("decoy", "requested"): 1,
    }
