"""The event stream's consumer limit (session 20): set by jobrunner, raised on an existing
stream, and never a reason for a viewer's stream to end early.

nats-server 2.15 gives a stream that sets no ``max_consumers`` a limit of 1,000 (its config
still says -1) and refuses the next consumer with err_code 10026: every SSE catch-up read is a
consumer, so 2,000 viewers catching up at once met it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import msgspec
import pytest
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import MAX_CONSUMERS_REACHED, Fanout, Limits
from tests.sse_client import read_stream
from tests.system import System
from tests.test_history_logs import TEST_TYPES, finished_job
from tests.test_sse_memory import fanout_of

pytestmark = pytest.mark.timeout(120)


def parked(names: Names, i: int) -> api.ConsumerConfig:
    """A consumer that only takes a place on the stream (removed with it)."""
    return api.ConsumerConfig(
        name=f"parked{i}",
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


async def test_an_existing_stream_with_the_servers_default_is_raised_at_start(
    settings: Settings,
) -> None:
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    try:
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
    assert fanout.history_turns_skipped == 0


async def test_a_history_read_kept_from_its_turn_longer_reads_without_one(
    small_js: JetStreamContext, settings: Settings
) -> None:
    """Every place held past the idle limit (viewers that never read): the read goes ahead
    rather than wait on them, and gets everything."""
    fanout = one_place(small_js, settings)
    assert await read_with_every_turn_taken(fanout, HISTORY_IDLE * 2) == list(range(1, 51))
    assert fanout.history_turns_skipped == 1
    await asyncio.sleep(HISTORY_IDLE)  # (the holder lets go before the test ends)


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
