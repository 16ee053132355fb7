"""The event stream's consumer limit (session 20): set by jobrunner, raised on an existing
stream, and never a reason for a viewer's stream to end early.

nats-server 2.15 gives a stream that sets no ``max_consumers`` a limit of 1,000 (its config
still says -1) and refuses the next consumer with err_code 10026: every SSE catch-up read is a
consumer, so 2,000 viewers catching up at once met it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError

from jobrunner.common import artifactstore, eventstore, subscription
from jobrunner.common.consumerlimit import MAX_CONSUMERS_REACHED
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import Fanout, HistoryStalled, Limits
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.emit_jobs import finished_job
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.wide_viewers import fanout_of

pytestmark = pytest.mark.timeout(120)


def parked(names: Names, i: int) -> api.ConsumerConfig:
    """A consumer that only takes a place on the stream (removed with it).

    Durable: the server removes a consumer with a name but no durable name after 5 s without a
    reader (its default ``inactive_threshold``), and a loaded machine took longer than that to
    make 1,100 of them: the first ones were gone before the count (734 of 1,100)."""
    return api.ConsumerConfig(
        name=f"parked{i}",
        durable_name=f"parked{i}",
        filter_subject=names.all_subjects,
        ack_policy=api.AckPolicy.NONE,
        mem_storage=True,
    )


async def test_the_event_stream_takes_more_consumers_than_the_servers_default(
    js: JetStreamContext, settings: Settings
) -> None:
    names = Names(settings.prefix)
    info = await js.stream_info(names.stream)
    assert info.config.max_consumers == settings.stream_max_consumers == 10_000
    for i in range(1_100):  # the server's default is 1,000
        await js.add_consumer(names.stream, parked(names, i))
    assert (await js.stream_info(names.stream)).state.consumer_count == 1_100


def needs_a_changeable_limit(nc: NATS) -> None:
    """Raising a stream's consumer limit needs nats-server 2.12.5 (the suite's wheel has it);
    on an older one (``JOBRUNNER_TEST_NATS_URL``) tests/test_old_nats_server.py tests the
    fallback."""
    if not eventstore.can_change_consumer_limit(nc.connected_server_version):
        pytest.skip(f"nats-server {nc.connected_server_version} cannot change a consumer limit")


async def test_an_existing_stream_with_the_servers_default_is_raised_at_start(
    settings: Settings,
) -> None:
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    try:
        needs_a_changeable_limit(nc)
        js = nc.jetstream()
        # As an installation made before the setting has it: no limit of its own.
        made_before = eventstore.stream_config(names, settings)
        made_before.max_consumers = None
        await js.add_stream(made_before)
        assert (await js.stream_info(names.stream)).config.max_consumers == -1
        await eventstore.ensure_topology(js, names, settings)
        assert (await js.stream_info(names.stream)).config.max_consumers == 10_000
    finally:
        await eventstore.close(nc)


async def test_the_artifacts_bucket_gets_the_same_limit_new_or_existing(
    settings: Settings,
) -> None:
    """Downloads and ZIP archives (two consumers or more each) read the artifacts bucket through
    consumers of its stream, which an object store's config leaves on the server's default."""
    names = Names(settings.prefix)
    bucket = artifactstore.stream_name(names)
    nc = await eventstore.connect(settings, "test")
    try:
        needs_a_changeable_limit(nc)
        js = nc.jetstream()
        await artifactstore.ensure_bucket(js, names, settings)  # as made before the limit
        assert (await js.stream_info(bucket)).config.max_consumers == -1
        await eventstore.ensure_topology(js, names, settings)
        assert (await js.stream_info(bucket)).config.max_consumers == 10_000
        await js.delete_stream(bucket)
        await eventstore.ensure_topology(js, names, settings)  # a new one
        assert (await js.stream_info(bucket)).config.max_consumers == 10_000
    finally:
        await eventstore.close(nc)


LIMIT = 12  # the stream's consumers in the next tests


@pytest.fixture
async def small_js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """The test's stream with room for ``LIMIT`` consumers, all of them taken but one, and a
    job's 50 events in it."""
    small = msgspec.structs.replace(settings, stream_max_consumers=LIMIT)
    names = Names(small.prefix)
    nc = await eventstore.connect(small, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, small)
    for i in range(LIMIT - 1):
        await js.add_consumer(names.stream, parked(names, i))
    now = datetime.now(UTC)
    batch = [
        events.LineLogged(job_id="full", lines=[events.LogLine(n, "stdout", "INFO", now, "x")])
        for n in range(50)
    ]
    await eventstore.publish_many(js, names, batch)
    yield js
    await eventstore.close(nc)


HISTORY_IDLE = 1.0


async def read_while_full(fanout: Fanout, held: float) -> list[int]:
    """A catch-up read started with the stream at its limit (one more reader holding the last
    place), whose place frees after ``held`` seconds: the sequences it yields."""
    js, names = fanout.js, fanout.names
    await js.add_consumer(names.stream, parked(names, LIMIT))
    asyncio.get_running_loop().call_later(
        held, lambda: asyncio.ensure_future(js.delete_consumer(names.stream, f"parked{LIMIT}"))
    )
    return [item.seq async for item in fanout.history("full", 1, 50)]


def fanout_on(js: JetStreamContext, settings: Settings, history_reads: int = 256) -> Fanout:
    limits = Limits(
        keepalive=1,
        client_bytes=1 << 20,
        total_bytes=8 << 20,
        history_idle=HISTORY_IDLE,
        history_reads=history_reads,
    )
    return Fanout(js, Names(settings.prefix), sse.frames_for, limits)


async def test_a_history_read_waits_for_a_place_shorter_than_its_idle_limit(
    small_js: JetStreamContext, settings: Settings
) -> None:
    fanout = fanout_on(small_js, settings)
    seqs = await read_while_full(fanout, HISTORY_IDLE / 2)
    assert seqs == list(range(1, 51))
    assert fanout.consumer_limit_waits > 0


async def test_a_history_read_gives_up_on_a_full_stream_after_its_idle_limit(
    small_js: JetStreamContext, settings: Settings
) -> None:
    fanout = fanout_on(small_js, settings)
    with pytest.raises(BadRequestError) as refused:
        await read_while_full(fanout, HISTORY_IDLE * 2)
    assert refused.value.err_code == MAX_CONSUMERS_REACHED
    assert fanout.consumer_limit_waits > 0  # it tried again before it gave up
    await asyncio.sleep(HISTORY_IDLE * 1.5)  # (the place frees before the stream goes)


async def read_with_every_turn_taken(fanout: Fanout, held: float) -> list[int]:
    """A catch-up read started while the process's one place for reads is held by another
    (a viewer that does not read), freed after ``held`` seconds: the sequences it yields."""
    await fanout.history_reads.acquire()
    asyncio.get_running_loop().call_later(held, fanout.history_reads.release)
    return [item.seq async for item in fanout.history("full", 1, 50)]


def one_place(js: JetStreamContext, settings: Settings) -> Fanout:
    return fanout_on(js, settings, history_reads=1)


async def test_a_history_read_waits_for_its_turn_shorter_than_its_idle_limit(
    small_js: JetStreamContext, settings: Settings
) -> None:
    fanout = one_place(small_js, settings)
    assert await read_with_every_turn_taken(fanout, HISTORY_IDLE / 2) == list(range(1, 51))


async def holder_pausing(fanout: Fanout, pause: float, read_ended: asyncio.Event) -> list[int]:
    """A catch-up read whose client takes its first item, then leaves the next untaken for
    ``pause`` seconds: the sequences it got before its stream ended."""
    seqs: list[int] = []
    try:
        async for item in fanout.history("full", 1, 50):
            seqs.append(item.seq)
            if len(seqs) == 1:
                await asyncio.sleep(pause)
    finally:
        read_ended.set()
    return seqs


async def test_a_turn_held_by_a_client_slower_than_the_idle_limit_goes_to_the_next_read(
    small_js: JetStreamContext, settings: Settings
) -> None:
    """The holder's client leaves an item untaken past history_idle: its read ends without
    the rest (its client resumes), and the waiting read gets the turn meanwhile, not after."""
    fanout = one_place(small_js, settings)
    holder_ended = asyncio.Event()
    holder = asyncio.create_task(holder_pausing(fanout, HISTORY_IDLE * 3, holder_ended))
    await asyncio.sleep(0.1)  # the holder has its turn
    waiter = [item.seq async for item in fanout.history("full", 1, 50)]
    assert waiter == list(range(1, 51))
    assert not holder.done()  # it got the turn before the holder's client came back
    with pytest.raises(HistoryStalled):
        await holder
    assert fanout.history_turns_given_back == 1


async def test_a_turn_held_by_a_client_just_within_the_idle_limit_is_kept(
    small_js: JetStreamContext, settings: Settings
) -> None:
    fanout = one_place(small_js, settings)
    holder_ended = asyncio.Event()
    holder = asyncio.create_task(holder_pausing(fanout, HISTORY_IDLE * 0.8, holder_ended))
    await asyncio.sleep(0.1)
    waiter = asyncio.create_task(read_all(fanout))
    await holder_ended.wait()
    assert not waiter.done()  # it waited for the holder's read to end
    assert await holder == list(range(1, 51))
    assert await waiter == list(range(1, 51))
    assert fanout.history_turns_given_back == 0


async def read_all(fanout: Fanout) -> list[int]:
    return [item.seq async for item in fanout.history("full", 1, 50)]


async def test_a_crowd_waiting_behind_stalled_turns_stays_within_the_cap(
    js: JetStreamContext, settings: Settings
) -> None:
    """The review's case: every turn held by clients that do not read, and a crowd behind
    them. The holders give their turns back; the crowd never reads more than ``READS`` at once,
    and each viewer, resuming after a cut as a client does, gets every event once."""
    reads, crowd = 2, 20
    names = Names(settings.prefix)
    now = datetime.now(UTC)
    await eventstore.publish_many(
        js,
        names,
        [
            events.LineLogged(job_id="full", lines=[events.LogLine(n, "stdout", "INFO", now, "x")])
            for n in range(50)
        ],
    )
    fanout = fanout_on(js, settings, history_reads=reads)
    stalled = [
        asyncio.create_task(holder_pausing(fanout, 60, asyncio.Event())) for _ in range(reads)
    ]
    await asyncio.sleep(0.1)
    open_now = peak = 0

    async def viewer() -> list[int]:
        nonlocal open_now, peak
        seqs: list[int] = []
        while len(seqs) < 50:  # resumes after a cut, from what it got
            reading = False
            try:
                async for item in fanout.history("full", len(seqs) + 1, 50):
                    if not reading:
                        reading = True
                        open_now += 1
                        peak = max(peak, open_now)
                    seqs.append(item.seq)
                    await asyncio.sleep(0.005)  # at its own pace, well within the idle limit
            except HistoryStalled:
                pass
            finally:
                open_now -= reading
        return seqs

    got = await asyncio.gather(*(viewer() for _ in range(crowd)))
    assert all(seqs == list(range(1, 51)) for seqs in got)
    assert peak <= reads, peak
    assert fanout.history_turns_given_back == reads
    for task in stalled:
        task.cancel()
    await asyncio.gather(*stalled, return_exceptions=True)


LINES = 400  # a long past: its viewers read it from JetStream, not from a feed's start
VIEWERS = 60


class TestManyViewersOnAFewConsumers:
    @pytest.fixture(params=[8, 256], ids=["waiting-their-turn", "retrying-the-refusal"])
    def settings(self, settings: Settings, request: pytest.FixtureRequest) -> Settings:
        return msgspec.structs.replace(
            settings,
            job_types_file=TEST_TYPES,
            max_streams_per_token=10_000,
            stream_max_consumers=20,
            sse_history_reads=request.param,
        )

    async def test_every_viewer_gets_every_line_once_and_done(self, system: System) -> None:
        """60 viewers catch up on a finished job at once, on a stream with room for 20
        consumers (the services' own among them): they wait their turn (a few reads at a time)
        or retry a refused consumer, and none is cut."""
        job = await finished_job(system, lines=LINES)
        path = f"/jobs/stream/{job['id']}"
        async with system.client(limits=httpx.Limits(max_connections=None)) as client:
            streams = await asyncio.gather(*(read_stream(client, path) for _ in range(VIEWERS)))
        expected = [f"INFO line {i} [{i}/{LINES}]" for i in range(1, LINES + 1)]
        for stream in streams:
            texts = [e.json["text"] for e in stream.events if e.event == "message"]
            assert texts == expected
            assert stream.events[-1].event == "done"
        assert fanout_of(system).clients_cut == 0


async def test_a_reader_refused_at_the_limit_sends_no_delete(
    small_js: JetStreamContext, settings: Settings
) -> None:
    """A create refused with 10026 made nothing: a delete for it would only queue ahead of
    the next viewers' creates in JetStream's API."""
    names = Names(settings.prefix)
    # Earlier tests' readers may still have deletes queued in this event loop: none of ours.
    await subscription.forget_deletes()
    await small_js.add_consumer(names.stream, parked(names, LIMIT))  # the last place taken
    with pytest.raises(BadRequestError) as refused:
        async with subscription.ordered_reader(small_js, names.stream, names.all_subjects, 1):
            pass
    assert refused.value.err_code == MAX_CONSUMERS_REACHED
    assert subscription.deletes_pending() == 0


# A job's feed and the update streams meet the limit as history reads do (session 21).
# sse_history_idle_seconds: how long a reader tries again at the limit; a place frees after half
# of it, many keep-alive intervals even when the stream's request starts late on a loaded machine.
READER_IDLE = 3.0
KEEPALIVE = 0.2


class TestFeedsAndUpdateStreamsAtTheLimit:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return msgspec.structs.replace(
            settings,
            job_types_file=TEST_TYPES,
            stream_max_consumers=40,
            sse_history_idle_seconds=READER_IDLE,
            sse_keepalive_seconds=KEEPALIVE,
        )

    @staticmethod
    @contextlib.asynccontextmanager
    async def full(system: System) -> AsyncIterator[tuple[JetStreamContext, Names]]:
        """Every place on the event stream taken (the services' consumers and parked ones)."""
        names = Names(system.settings.prefix)
        nc = await eventstore.connect(system.settings, "test-filler")
        try:
            js = nc.jetstream()
            for i in range(100):
                try:
                    await js.add_consumer(names.stream, parked(names, i))
                except BadRequestError as exc:
                    if exc.err_code != MAX_CONSUMERS_REACHED:
                        raise
                    break
            else:
                raise AssertionError("the stream took 100 more consumers")
            yield js, names
        finally:
            await nc.close()

    @staticmethod
    def free_one_after(js: JetStreamContext, names: Names, seconds: float) -> None:
        asyncio.get_running_loop().call_later(
            seconds, lambda: asyncio.ensure_future(js.delete_consumer(names.stream, "parked0"))
        )

    async def test_a_jobs_feed_waits_for_a_place_silently(self, system: System) -> None:
        """A viewer's job needs a feed while the stream is full; a place frees after half the
        readers' patience: every line and ``done``."""
        job = await finished_job(system, lines=5)
        async with self.full(system) as (js, names):
            self.free_one_after(js, names, READER_IDLE / 2)
            async with system.client() as client:
                stream = await read_stream(client, f"/jobs/stream/{job['id']}")
            texts = [e.json["text"] for e in stream.events if e.event == "message"]
            assert texts == [f"INFO line {i} [{i}/5]" for i in range(1, 6)]
            assert stream.events[-1].event == "done"
            assert fanout_of(system).consumer_limit_waits > 0

    async def test_a_jobs_feed_refused_past_its_patience_says_why(self, system: System) -> None:
        job = await finished_job(system, lines=5)
        async with self.full(system):
            async with system.client() as client:
                stream = await read_stream(client, f"/jobs/stream/{job['id']}")
            assert [e.event for e in stream.events] == ["unavailable"]
            assert stream.events[0].json["code"] == "STREAM_CONSUMER_LIMIT"

    async def test_an_update_stream_waits_for_a_place_with_keepalives(self, system: System) -> None:
        """``/api/jobs/stream`` from the start on a full stream: its catch-up consumer and then
        its live one wait for places (the catch-up's own freed in the background)."""
        job = await finished_job(system, lines=5)
        async with self.full(system) as (js, names):
            self.free_one_after(js, names, READER_IDLE / 2)
            async with system.client() as client:
                stream = await read_stream(client, "/api/jobs/stream?after=0", stop_after=4)
            updates = [e.data for e in stream.events if e.event == "job_update"]
            assert len(updates) == 4, stream.events
            assert all(job["id"] in data for data in updates)
            assert "keep-alive" in stream.comments

    async def test_an_update_stream_refused_past_its_patience_says_why(
        self, system: System
    ) -> None:
        await finished_job(system, lines=5)
        async with self.full(system):
            async with system.client() as client:
                stream = await read_stream(client, "/api/jobs/stream?after=0")
            assert "keep-alive" in stream.comments
            assert [e.event for e in stream.events] == ["unavailable"]
            assert stream.events[0].json["code"] == "STREAM_CONSUMER_LIMIT"


HERD = 30  # update-stream clients arriving together at a full stream
HERD_PATIENCE = 3.0  # sse_history_idle_seconds for them


class TestAHerdAtTheLimit:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return msgspec.structs.replace(
            settings,
            job_types_file=TEST_TYPES,
            stream_max_consumers=40,
            sse_history_idle_seconds=HERD_PATIENCE,
            sse_keepalive_seconds=1.0,
        )

    async def test_update_streams_at_the_limit_try_again_one_at_a_time(
        self, system: System
    ) -> None:
        """30 update streams on a full stream, none freed: each ends with ``unavailable`` and a
        jittered ``retry``, and the process tries again one reader at a time (before session
        21's review fixes each client backed off on its own: about 8 consumer creates each in
        under 5 s). Counted: the consumer creates JetStream was asked for."""
        await finished_job(system, lines=2)
        async with TestFeedsAndUpdateStreamsAtTheLimit.full(system):
            counter = await eventstore.connect(system.settings, "test-counter")
            creates = 0

            async def count(msg: object) -> None:
                nonlocal creates
                creates += 1

            try:
                await counter.subscribe("$JS.API.CONSUMER.CREATE.>", cb=count)
                await counter.subscribe("$JS.API.CONSUMER.DURABLE.CREATE.>", cb=count)
                await counter.flush()
                async with system.client() as client:
                    streams = await asyncio.gather(
                        *(read_stream(client, "/api/jobs/stream?after=0") for _ in range(HERD))
                    )
                await counter.flush()
            finally:
                await counter.close()
            assert all([e.event for e in s.events] == ["unavailable"] for s in streams)
            # Each client's first attempt, and the gate holders' (one at a time, a pause apart
            # doubling to 1 s: about 6 in 3 s, 2 s for the last in the gate): ~40 in all.
            assert creates <= 2 * HERD, f"{creates} consumer creates for {HERD} clients"
            retries = {s.retry for s in streams}
            assert len(retries) > 1, "every client told to come back after the same interval"
