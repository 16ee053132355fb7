"""Live streams while Postgres is frozen (SIGSTOPped: connects and queries never answer). The
all-jobs stream used to wait for a look-up of a job it did not know until the read pool's
deadline, with no keep-alive, and then ended (the read's timeout re-raised mid-stream), so
browsers reconnected in a loop; a job stream opened meanwhile answered 503 after the same wait.
A frozen read is now given up after ``stream_read_timeout_seconds``, as a refused one: the
event is sent from what it tells, keep-alives flow, and the stream follows on after the thaw."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from jobrunner.common import readmodelversion
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api import job_updates, streamlookups
from tests.history_support import job_events, publish, wait_projected
from tests.sse_client import SseEvent, SseStream, iter_events
from tests.system import System
from tests.tools.api_parts import AcquiredDeadlines, gate_of
from tests.tools.began import began_event
from tests.tools.postgres_processes import frozen_postgres
from tests.tools.stream_reading import read_into, until

pytestmark = pytest.mark.timeout(180)

# A stream's look-ups are bounded by stream_read_timeout_seconds, longer than health's bound
# (as the defaults, 5 s and 1 s: a Postgres slower than health's costs a stream no look-up);
# the read pool's deadline is longer still (as the defaults' 60 s), so a stream that waited for
# the deadline is told apart.
BOUND = 2.0
HEALTH_BOUND = 1.0
READ_DEADLINE = 6.0
KEEPALIVE = 0.5
# Far longer than a resync's way from the probe's answer to the client (a loaded machine's too):
# one sent at the next keep-alive is told apart by its order alone.
LONG_KEEPALIVE = 10.0


@pytest.fixture
def settings(settings: Settings, own_postgres: EmbeddedPostgres) -> Settings:
    """The test's settings on a Postgres of its own (it is frozen, so it must not be the shared
    one), with the bounds above and tokens required."""
    return msgspec.structs.replace(
        settings,
        database_url=own_postgres.url,
        api_read_timeout_seconds=READ_DEADLINE,
        health_postgres_timeout_seconds=HEALTH_BOUND,
        stream_read_timeout_seconds=BOUND,
        sse_keepalive_seconds=KEEPALIVE,
        auth=True,
    )


@pytest.fixture
def live(projector_and_api: System, monkeypatch: pytest.MonkeyPatch) -> System:
    """Projector and API, no runner (the test publishes the jobs' events)."""
    # Looked up again soon after a failed look-up, so that the test sees it without waiting.
    monkeypatch.setattr(streamlookups, "PAUSE_SECONDS", 0.5)
    return projector_and_api


@contextlib.asynccontextmanager
async def all_jobs_stream(
    client: httpx.AsyncClient, seen: SseStream, path: str = "/api/jobs/stream"
) -> AsyncIterator[asyncio.Task[None]]:
    """The all-jobs stream at ``path`` opened (200) and read into ``seen`` in the background
    while the block runs (two minutes at the most): the reader's task, for ``until``."""
    async with asyncio.timeout(120), client.stream("GET", path) as response:
        assert response.status_code == 200, await response.aread()
        reader = asyncio.create_task(read_into(response, seen))
        try:
            yield reader
        finally:
            reader.cancel()


async def end_looked_up_in_a_freeze(
    live: System,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    job_id: str,
    frozen_for: float,
    keepalives_after: int = 0,
) -> tuple[SseStream, SseEvent]:
    """A running job ``job_id`` ends while Postgres is frozen, for ``frozen_for`` seconds from
    the all-jobs stream's look-up of the job on, then thawed: all the stream sent until the
    job's end and ``keepalives_after`` keep-alives after it, and the end's frame."""
    await running_job(live.settings, job_id)
    looking = began_event(monkeypatch, job_updates, "read_ahead")
    seen = SseStream()
    async with live.client() as client, all_jobs_stream(client, seen) as reader:
        with frozen_postgres(own_postgres):
            end = await publish(live.settings, ended(job_id))
            async with asyncio.timeout(30):
                await looking.wait()  # the stream met the event and looks the job up
            await asyncio.sleep(frozen_for)  # the fault's length, from the look-up on
        await until(reader, lambda: sent(seen, end) is not None)
        kept = len(seen.comments)
        await until(reader, lambda: len(seen.comments) >= kept + keepalives_after)
    frame = sent(seen, end)
    assert frame is not None
    return seen, frame


async def running_job(settings: Settings, job_id: str, owner: str | None = None) -> None:
    """A running ``emit`` job that printed one line, projected."""
    requested, *rest = job_events(job_id, "emit", status=JobStatus.RUNNING, lines=["one"])
    assert isinstance(requested, events.JobRequested)
    requested = msgspec.structs.replace(requested, requested_by=owner)
    await wait_projected(settings, await publish(settings, [requested, *rest]))


def ended(job_id: str) -> list[events.Event]:
    return [
        events.StatusChanged(
            job_id=job_id, event_id=events.terminal_event_id(job_id), status=JobStatus.COMPLETED
        )
    ]


async def test_the_all_jobs_stream_sends_an_unknown_jobs_end_while_postgres_is_frozen(
    live: System, own_postgres: EmbeddedPostgres
) -> None:
    """Frozen longer than the bound: a job the stream does not know ends, and the stream sends
    its end from the event alone while Postgres is still frozen, then keep-alives; after the
    thaw it looks jobs up again (another job's progress shows with its type). Each event once,
    in order."""
    settings = live.settings
    await running_job(settings, "frozen-a")
    await running_job(settings, "frozen-b")
    seen = SseStream()
    # No ``after``: the stream starts after what the read models show; it knows no job.
    async with live.client() as client, all_jobs_stream(client, seen) as reader:
        with frozen_postgres(own_postgres):
            end = await publish(settings, ended("frozen-a"))
            await until(reader, lambda: sent(seen, end) is not None)
            kept = len(seen.comments)
            await until(reader, lambda: len(seen.comments) >= kept + 2)
        # Progress of a job not known shows only once it is looked up: sent again until then.
        while (shown := job_frame(seen, "frozen-b")) is None:
            await publish(settings, [events.ProgressReported(job_id="frozen-b", current=1)])
            await until(reader, sent_or_kept_alive(seen, "frozen-b"))
    frame = sent(seen, end)
    assert frame is not None
    assert frame.json["status"] == "completed", frame.json
    assert frame.json["jobType"] is None, frame.json  # from the event: Postgres was frozen
    assert shown.json["jobType"] == "emit", shown.json  # from the read model, after the thaw
    ids = [int(e.id) for e in seen.events if e.id is not None]
    assert ids == sorted(set(ids)), ids


async def test_a_burst_of_unknown_jobs_ending_on_a_frozen_postgres_waits_out_one_look_up(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five jobs the stream does not know end at once while Postgres is frozen: the stream gives
    up one look-up and sends all five ends from the events, trying no other look-up meanwhile
    (without the pause after a failed one: a bound's wait for each job's state and batch, ten
    more)."""
    monkeypatch.setattr(streamlookups, "PAUSE_SECONDS", 600.0)  # not over within the test
    settings = live.settings
    jobs = [f"burst-{n}" for n in range(5)]
    for job_id in jobs:
        await running_job(settings, job_id)
    seen = SseStream()
    async with live.client() as client, all_jobs_stream(client, seen) as reader:
        with frozen_postgres(own_postgres):
            looked = AcquiredDeadlines(live, monkeypatch)
            last = await publish(settings, [e for job_id in jobs for e in ended(job_id)])
            await until(reader, lambda: sent(seen, last) is not None)
            looked.stop()
    # The gate's watch looks too, now and then, within the read deadline (None): not counted.
    assert looked.bounded() == [BOUND], looked.deadlines
    ends = [e.json["jobId"] for e in seen.events if e.json.get("status") == "completed"]
    assert ends == jobs, ends


async def test_streams_opened_during_a_freeze_wait_for_no_read_of_their_own(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One all-jobs stream gave up a look-up on a frozen Postgres; three more streams then meet
    the same unknown job's end: they send it from the event at once, making no read of their own
    (the API takes Postgres as away for all its streams until the pause is over: one read per
    pause, not one per stream, each waiting the bound and terminating a pooled connection)."""
    monkeypatch.setattr(streamlookups, "PAUSE_SECONDS", 600.0)  # not over within the test
    settings = live.settings
    await running_job(settings, "many-a")
    first = SseStream()
    others = [SseStream() for _ in range(3)]
    async with live.client() as client, all_jobs_stream(client, first) as reader:
        with frozen_postgres(own_postgres):
            looked = AcquiredDeadlines(live, monkeypatch)
            end = await publish(settings, ended("many-a"))
            await until(reader, lambda: sent(first, end) is not None)
            async with contextlib.AsyncExitStack() as more:
                readers = [
                    await more.enter_async_context(
                        all_jobs_stream(client, seen, f"/api/jobs/stream?after={end - 1}")
                    )
                    for seen in others
                ]
                for later, seen in zip(readers, others, strict=True):
                    await until(later, sent_at(seen, end))
            looked.stop()
    assert looked.bounded() == [BOUND], looked.deadlines  # the first stream's look-up alone
    for seen in others:
        frame = sent(seen, end)
        assert frame is not None
        assert frame.json["status"] == "completed", frame.json


async def test_keep_alives_go_on_while_a_stream_probes_a_frozen_postgres(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream whose look-up failed on a frozen Postgres asks at its keep-alives whether reads
    answer again (a probe, which waits on the frozen Postgres). While a probe waits (here held
    until the client has heard three more keep-alives), the keep-alives go on at their interval:
    a client or proxy that cuts a silent stream keeps it. (Before: the stream waited for the
    probe, so every probe lengthened the client's silence by its wait, the bound, whether the
    keep-alive went out just before it, as since session 33, or just after.)"""
    settings = live.settings
    await running_job(settings, "probed-a")
    probing = asyncio.Event()
    heard = asyncio.Event()
    probe = streamlookups.StreamLookups.probe

    async def held(self: streamlookups.StreamLookups) -> None:
        probing.set()
        await probe(self)  # on the frozen Postgres it waits, fails or is not made
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await heard.wait()  # a probe as long as the test needs

    monkeypatch.setattr(streamlookups.StreamLookups, "probe", held)
    seen = SseStream()
    async with (
        live.client() as client,
        asyncio.timeout(120),
        client.stream("GET", "/api/jobs/stream") as response,
    ):
        assert response.status_code == 200, await response.aread()
        reader = asyncio.create_task(read_into(response, seen))
        try:
            with frozen_postgres(own_postgres):
                end = await publish(settings, ended("probed-a"))
                await until(reader, lambda: sent(seen, end) is not None)
                async with asyncio.timeout(30):
                    await probing.wait()
                kept = len(seen.comments)
                async with asyncio.timeout(30):
                    await until(reader, lambda: len(seen.comments) >= kept + 3)
                heard.set()
        finally:
            heard.set()
            reader.cancel()
    frame = sent(seen, end)
    assert frame is not None
    assert frame.json["jobType"] is None, frame.json  # the look-up failed: a probe was due


async def test_the_resync_after_a_thaw_comes_as_the_probe_answers_not_a_keep_alive_later(
    settings: Settings, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream's look-up failed on a frozen Postgres; its next keep-alive asks whether reads
    answer again (a probe, held here until after the thaw and the projector's applying the job's
    end). The probe answers, and the stream sends ``resync`` at once: the first frame after the
    probe is the resync, not the next keep-alive. (Before: the keep-alive that began the probe
    asked for the resync before the probe had run, so the resync waited for the next keep-alive,
    15 s by default.)"""
    monkeypatch.setattr(streamlookups, "PAUSE_SECONDS", 0.5)
    settings = msgspec.structs.replace(settings, sse_keepalive_seconds=LONG_KEEPALIVE)
    probing = asyncio.Event()
    released = asyncio.Event()
    probe = streamlookups.StreamLookups.probe

    async def held(self: streamlookups.StreamLookups) -> Any:
        probing.set()
        async with asyncio.timeout(60):
            await released.wait()
        return await probe(self)

    monkeypatch.setattr(streamlookups.StreamLookups, "probe", held)
    seen = SseStream()
    async with System(settings) as system:
        await system.start_projector()
        await system.start_api()
        await system.wait_healthy()
        await running_job(settings, "late-resync")
        async with (
            system.client() as client,
            asyncio.timeout(120),
            client.stream("GET", "/api/jobs/stream") as response,
        ):
            assert response.status_code == 200, await response.aread()
            reader = asyncio.create_task(read_into(response, seen))
            try:
                with frozen_postgres(own_postgres):
                    end = await publish(settings, ended("late-resync"))
                    await until(reader, lambda: sent(seen, end) is not None)
                    async with asyncio.timeout(60):
                        await probing.wait()  # at the keep-alive after the failed look-up
                await wait_projected(settings, end)
                kept, events_sent = len(seen.comments), len(seen.events)
                released.set()
                await until(
                    reader, lambda: len(seen.comments) > kept or len(seen.events) > events_sent
                )
            finally:
                released.set()
                reader.cancel()
    after = [e.event for e in seen.events[events_sent:]]
    assert after == ["resync"], f"{len(seen.comments) - kept} keep-alives, then events {after}"
    assert len(seen.comments) == kept, f"{len(seen.comments) - kept} keep-alives before it"


async def test_a_look_up_answered_after_another_failed_does_not_end_the_streams_pause(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres slow past the bound for one stream's look-up (the jobs table locked): that
    look-up is given up, and the API's streams read nothing for the pause. Another stream's
    look-up, begun before that failure (the pause not begun yet) and answered after it, sends
    its job's end with the job's type, but does not end the pause: that stream sends the next
    unknown job's end from the event alone, making no read. (Before: any read that answered
    ended the pause, one the failure had just begun.)"""
    monkeypatch.setattr(streamlookups, "PAUSE_SECONDS", 600.0)  # not over within the test
    settings = live.settings
    for job_id in ("slow-y", "slow-x", "slow-after"):
        await running_job(settings, job_id)
    first = SseStream()
    second = SseStream()
    locker = await asyncpg.connect(own_postgres.url)
    locked = locker.transaction()
    async with (
        live.client() as client,
        asyncio.timeout(120),
        client.stream("GET", "/api/jobs/stream") as response,
    ):
        assert response.status_code == 200, await response.aread()
        readers = [asyncio.create_task(read_into(response, first))]
        try:
            await locked.start()
            # Every read of the jobs table waits (not a frozen Postgres: the rest answers).
            await locker.execute(f"LOCK TABLE {READ_SCHEMA}.jobs IN ACCESS EXCLUSIVE MODE")
            failing = FailureHeldForTheNextRead(monkeypatch)
            end_y = await publish(settings, ended("slow-y"))
            async with asyncio.timeout(30):
                await failing.held.wait()  # the first stream's look-up of slow-y failed
            # The second look-up begins before that failure is known (held until it began),
            # with the whole bound ahead of it.
            async with client.stream("GET", f"/api/jobs/stream?after={end_y}") as later:
                assert later.status_code == 200, await later.aread()
                readers.append(asyncio.create_task(read_into(later, second)))
                end_x = await publish(settings, ended("slow-x"))
                # The first look-up gave up (its end sent without the type): the pause began.
                await until(readers[0], lambda: sent(first, end_x) is not None)
                assert sent(second, end_x) is None  # the second look-up still waits
                await locked.commit()  # the second look-up answers, within its bound
                await until(readers[1], lambda: sent(second, end_x) is not None)
                end_after = await publish(settings, ended("slow-after"))
                await until(readers[1], lambda: sent(second, end_after) is not None)
        finally:
            for reader in readers:
                reader.cancel()
            await locker.close()
    y_frame, x_frame, after_frame = sent(first, end_y), sent(second, end_x), sent(second, end_after)
    assert y_frame is not None
    assert x_frame is not None
    assert after_frame is not None
    assert y_frame.json["jobType"] is None, y_frame.json  # given up past the bound
    assert x_frame.json["jobType"] == "emit", x_frame.json  # answered after that failure
    assert after_frame.json["jobType"] is None, after_frame.json  # the pause went on
    assert failing.next_began.is_set()  # the second look-up began before the failure ended


async def test_a_freeze_just_shorter_than_the_bound_is_waited_out_by_the_look_up(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen for less than the bound, from the look-up's beginning on (0.6 of it): the look-up
    waits, and the job's end is sent with what the read model knows of it (its type). A guard:
    it passes without the bound too."""
    _, frame = await end_looked_up_in_a_freeze(
        live, own_postgres, monkeypatch, "thawed-a", frozen_for=BOUND * 0.6
    )
    assert frame.json["status"] == "completed", frame.json
    assert frame.json["jobType"] == "emit", frame.json


async def test_a_postgres_slower_than_healths_bound_costs_a_stream_no_look_up(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen from the look-up's beginning on for longer than health's bound but shorter than
    the stream's (a Postgres merely slow): the look-up waits, the job's end is sent with its
    type, and no ``resync`` follows (nothing was left out). With health's bound as the stream's
    (as before session 33's second review) the look-up was lost."""
    seen, frame = await end_looked_up_in_a_freeze(
        live,
        own_postgres,
        monkeypatch,
        "slow-a",
        frozen_for=(HEALTH_BOUND + BOUND) / 2,  # between the two bounds
        keepalives_after=4,  # a resync's chances
    )
    assert frame.json["jobType"] == "emit", frame.json
    assert [e for e in seen.events if e.event == "resync"] == []


async def test_a_freeze_just_longer_than_the_bound_is_not_waited_out_by_the_look_up(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen for 1.5 bounds from the look-up's beginning on, then thawed: the look-up was given
    up at the bound, so the job's end was sent from the event alone (no type), not with what the
    read model knows after the thaw. (With the read pool's deadline as bound, longer than the
    freeze, the look-up would have waited and sent the type.)"""
    _, frame = await end_looked_up_in_a_freeze(
        live, own_postgres, monkeypatch, "thawed-late", frozen_for=BOUND * 1.5
    )
    assert frame.json["status"] == "completed", frame.json
    assert frame.json["jobType"] is None, frame.json


async def test_the_all_jobs_stream_opened_on_a_frozen_postgres_is_refused_after_the_bound(
    live: System, own_postgres: EmbeddedPostgres
) -> None:
    """Opened with neither ``Last-Event-ID`` nor ``after``, the stream first reads where the read
    models are: frozen past the bound, it answers 503 READ_MODELS_TIMEOUT naming the bound
    (before: the read pool's deadline, 6 s here, 60 s by default)."""
    with frozen_postgres(own_postgres):
        async with live.client() as client:
            response = await client.get("/api/jobs/stream")
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "READ_MODELS_TIMEOUT", error
    assert f"within {BOUND:g} s" in error["message"], error


async def test_an_all_jobs_stream_opened_during_the_pause_starts_where_the_projector_said(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another stream's look-up failed on a frozen Postgres, so the API's streams read nothing
    for a pause; a stream opened meanwhile with neither ``Last-Event-ID`` nor ``after`` makes no
    read of where the read models are but starts after what the projector last said it applied
    (200), and sends the next job's end. (Before: 503 READ_MODELS_UNAVAILABLE for the whole pause,
    Postgres thawed or not.)"""
    monkeypatch.setattr(streamlookups, "PAUSE_SECONDS", 600.0)  # not over within the test
    settings = live.settings
    await running_job(settings, "paused-a")
    await running_job(settings, "paused-b")
    first = SseStream()
    later = SseStream()
    async with live.client() as client, all_jobs_stream(client, first) as reader:
        with frozen_postgres(own_postgres):
            end = await publish(settings, ended("paused-a"))
            await until(reader, lambda: sent(first, end) is not None)
        async with all_jobs_stream(client, later) as opened:
            next_end = await publish(settings, ended("paused-b"))
            await until(opened, lambda: sent(later, next_end) is not None)
    frame = sent(later, next_end)
    assert frame is not None
    assert frame.json["status"] == "completed", frame.json


async def test_the_all_jobs_stream_opened_in_a_freeze_just_shorter_than_the_bound_opens(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen for 0.6 of the bound from the stream's read of where the read models are: the read
    waits, and the stream opens (200). A guard: it passes without the bound too."""
    looking = began_event(monkeypatch, streamlookups.StreamLookups, "fetchval")

    async def opened() -> int:
        async with live.client() as client, client.stream("GET", "/api/jobs/stream") as response:
            return response.status_code

    with frozen_postgres(own_postgres):
        opening = asyncio.create_task(opened())
        async with asyncio.timeout(30):
            await looking.wait()  # the stream's read began during the freeze
        await asyncio.sleep(BOUND * 0.6)  # the fault's length, from the read on
    assert await opening == 200


async def test_an_own_jobs_stream_shows_no_job_whose_owner_it_cannot_read_while_frozen(
    live: System, own_postgres: EmbeddedPostgres
) -> None:
    """A token limited to its own jobs: with Postgres frozen the stream cannot read the owners
    of jobs it does not know, shows neither job's end (its own neither: it fails closed), and
    stays open; after the thaw its next job shows."""
    settings = live.settings
    mine = await live.create_token("mine", "operator", own_jobs_only=True)
    await running_job(settings, "mine-a", owner="mine")
    await running_job(settings, "other-a", owner="other")
    seen = SseStream()
    every = SseStream()
    async with (
        live.client(token=mine) as me,
        live.client() as admin,
        all_jobs_stream(me, seen) as reader,
        all_jobs_stream(admin, every) as watcher,
    ):
        with frozen_postgres(own_postgres):
            last = await publish(settings, [*ended("mine-a"), *ended("other-a")])
            # The admin's stream sent both ends (from the events): they were read; the
            # token's stream, as slow to give up its look-ups, sends keep-alives after them.
            await until(watcher, lambda: sent(every, last) is not None)
            kept = len(seen.comments)
            await until(reader, lambda: len(seen.comments) >= kept + 2)
        requested, *rest = job_events("mine-b", "emit", status=JobStatus.COMPLETED)
        assert isinstance(requested, events.JobRequested)
        mine_next = await publish(
            settings, [msgspec.structs.replace(requested, requested_by="mine"), *rest]
        )
        await until(reader, lambda: sent(seen, mine_next) is not None)
    shown = {e.json["jobId"] for e in seen.events if e.event == "job_update"}
    assert shown == {"mine-b"}, [e.data for e in seen.events]


async def test_an_own_jobs_stream_frozen_just_longer_than_the_bound_tells_its_client_to_resync(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token limited to its own jobs: its job ends while Postgres is frozen for 1.5 bounds from
    the look-up of the job's owner on, so the end is hidden (fail closed) and never sent again.
    The stream sends ``resync`` (the page loads its list again) only once the read models hold
    what it hid: not while the projector, behind on the same frozen Postgres, has not applied
    the end (the reload would read the job running), and at once when it has. The reload then
    shows the job completed. (Before: resync as soon as a read answered, the projector stopped,
    and the reload showed the job running for good.)"""
    settings = live.settings
    mine = await live.create_token("mine", "operator", own_jobs_only=True)
    await running_job(settings, "resync-a", owner="mine")
    await live.stop_service("projector")  # behind on the thaw, as a projector with a backlog
    seen = SseStream()
    async with live.client(token=mine) as me, all_jobs_stream(me, seen) as reader:
        with frozen_postgres(own_postgres):
            looking = AcquiredDeadlines(live, monkeypatch, watched=BOUND)
            await publish(settings, ended("resync-a"))
            async with asyncio.timeout(30):
                await looking.began.wait()  # the stream looks the job's owner up
            await asyncio.sleep(BOUND * 1.5)  # the fault's length, from the look-up on
            hidden = [e for e in seen.events if e.event == "job_update"]
        # Reads answer again (each keep-alive probes) while the end is not projected.
        kept = len(seen.comments)
        await until(reader, lambda: len(seen.comments) >= kept + 8)
        early = [e for e in seen.events if e.event == "resync"]
        await live.start_projector()
        await until(reader, lambda: any(e.event == "resync" for e in seen.events))
        reloaded = await me.get("/api/jobs/resync-a")
    assert hidden == [], [e.data for e in hidden]  # fail closed while frozen
    assert early == [], [e.data for e in early]  # the reload would have shown it running
    [told] = [e for e in seen.events if e.event == "resync"]
    assert told.json["code"] == "READ_MODELS_BACK", told.json
    assert told.id is None  # the resume point stays the last event's
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["status"] == "completed", reloaded.json()


async def test_a_job_stream_opened_while_postgres_is_frozen_follows_the_job_to_its_end(
    live: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job stream opened while Postgres is frozen answers 200 (the job known from its
    JobRequested in NATS once the row's read passed the bound) and sends the job's line and end.
    Its read asked the pool for the stream's bound, not the pool's deadline. (Before: 503
    READ_MODELS_TIMEOUT after the read pool's deadline.)"""
    settings = live.settings
    await running_job(settings, "followed")
    lines: list[str] = []
    done: dict[str, Any] = {}
    looked = AcquiredDeadlines(live, monkeypatch)
    with frozen_postgres(own_postgres):
        async with (
            live.client() as client,
            asyncio.timeout(60),
            client.stream("GET", "/api/jobs/followed/stream") as response,
        ):
            assert response.status_code == 200, await response.aread()
            await publish(settings, ended("followed"))
            async for event in iter_events(response):
                if event.event == "message":
                    lines.append(event.json["text"])
                elif event.event == "done":
                    done = event.json
                    break
    assert lines == ["one"], lines
    assert done["status"] == "completed", done
    assert BOUND in looked.bounded(), looked.deadlines


async def test_a_stream_opened_before_the_api_knew_the_version_reads_no_newer_tables(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    """The API started while Postgres was frozen, so it serves without knowing the read models'
    version, and an all-jobs stream opens meanwhile. After the thaw the API learns that the
    tables are a newer jobrunner's: the stream reads none of them and, at its next event, says
    ``unavailable`` ``READ_MODELS_NEWER`` and ends (its reconnect is refused 503). (Before
    session 33: it read the newer tables, the gate having let it through once, at its start.)"""
    system = System(settings)
    try:
        await system.start_projector()
        await system.start_api()
        await running_job(settings, "newer-a")
        await system.stop_service("projector")  # it would not serve a newer version either
        await system.stop_api()
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(
                f"UPDATE {READ_SCHEMA}.{readmodelversion.VERSION_TABLE} SET version = $1",
                readmodelversion.READMODEL_VERSION + 1,
            )
        finally:
            await conn.close()
        seen = SseStream()
        async with system.client() as client:
            with frozen_postgres(own_postgres):
                await system.start_api()
                gate = gate_of(system)
                assert not gate.known
                last = await publish(
                    settings, [events.ProgressReported(job_id="newer-a", current=1)]
                )
                response = await client.send(
                    client.build_request("GET", f"/api/jobs/stream?after={last}"), stream=True
                )
                assert response.status_code == 200, await response.aread()
            reader = asyncio.create_task(read_into(response, seen))
            try:
                async with asyncio.timeout(60):
                    while not gate.known:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)  # the gate's watch looks on its own
                assert not gate.serving  # the tables are a newer jobrunner's
                await publish(settings, ended("newer-a"))
                async with asyncio.timeout(60):
                    await reader  # the stream ends
            finally:
                reader.cancel()
                await response.aclose()
    finally:
        await system.stop()
    assert not [e for e in seen.events if e.event == "job_update"], seen.events  # none read
    assert [e.json["code"] for e in seen.events if e.event == "unavailable"] == [
        "READ_MODELS_NEWER"
    ], [e.event for e in seen.events]


class FailureHeldForTheNextRead:
    """From now on, the first of a stream's reads to fail is held (``held`` set) until another
    read has begun (``next_began`` set): that read begins before the failure is known (no pause
    begun), however slowly either stream comes to its read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.held = asyncio.Event()
        self.next_began = asyncio.Event()
        within_bound = streamlookups.StreamLookups._within_bound

        async def holding(lookups: streamlookups.StreamLookups, query: Any) -> Any:
            if self.held.is_set():
                self.next_began.set()
            try:
                return await within_bound(lookups, query)
            except streamlookups.UNREADABLE:
                if self.held.is_set():
                    raise
                self.held.set()
                async with asyncio.timeout(60):
                    await self.next_began.wait()
                raise

        monkeypatch.setattr(streamlookups.StreamLookups, "_within_bound", holding)


def sent(stream: SseStream, seq: int) -> SseEvent | None:
    return next((e for e in stream.events if e.id == str(seq)), None)


def sent_at(stream: SseStream, seq: int) -> Callable[[], bool]:
    """Whether ``stream`` sent the frame of ``seq``."""
    return lambda: sent(stream, seq) is not None


def sent_or_kept_alive(stream: SseStream, job_id: str) -> Callable[[], bool]:
    """Whether, since now, the stream sent a keep-alive or a frame of ``job_id``."""
    told = len(stream.comments)
    return lambda: len(stream.comments) > told or job_frame(stream, job_id) is not None


def job_frame(stream: SseStream, job_id: str) -> SseEvent | None:
    return next(
        (e for e in stream.events if e.event == "job_update" and e.json["jobId"] == job_id), None
    )
