"""A flood's large line messages travel on the runner's bulk connection, a job's small ones on
its main connection, and a job's lines stay in order across the two (no noisy neighbour)."""

from __future__ import annotations

import asyncio
import faulthandler
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.bulk import BulkLane
from jobrunner.services.runner.publisher import BULK_BYTES, LinePublisher
from tests.freeze import frozen

JOB = "bulkjob"


@pytest.fixture
async def connections(settings: Settings) -> AsyncIterator[tuple[NATS, NATS]]:
    nc = await eventstore.connect(settings, "test-main")
    bulk = await eventstore.connect(settings, "test-bulk")
    await eventstore.ensure_topology(nc.jetstream(), Names(settings.prefix), settings)
    yield nc, bulk
    await eventstore.close(bulk)
    await eventstore.close(nc)


async def test_a_flood_goes_on_the_bulk_connection_and_a_line_on_the_main_one(
    connections: tuple[NATS, NATS], settings: Settings
) -> None:
    """A lone line, two full messages of a flood, a lone line again: the flood's messages on the
    bulk connection, the lone lines on the main one, every line in order."""
    nc, bulk = connections
    names = Names(settings.prefix)
    texts: list[str] = []
    arrived = asyncio.Event()

    async def keep(msg: Msg) -> None:
        event = codec.decode(msg.data)
        assert isinstance(event, events.LineLogged)
        texts.extend(line.text for line in event.lines)
        arrived.set()

    async def stored(count: int) -> None:
        async with asyncio.timeout(10):
            while len(texts) < count:
                arrived.clear()
                await arrived.wait()

    await nc.subscribe(names.job_kind_subject(JOB, "lines"), cb=keep)
    await nc.flush()
    main_before, bulk_before = nc.stats["out_msgs"], bulk.stats["out_msgs"]
    publisher = LinePublisher(nc, names, JOB, batch_max=1000, bulk=BulkLane(bulk, 5.0))
    publisher.start()
    # 1,000 lines of 100 characters: a message well over BULK_BYTES each.
    flood = [f"flood {i:05d} ".ljust(100, "x") for i in range(2000)]
    assert BULK_BYTES < 1000 * 100
    publisher.add("stdout", "INFO", "first", datetime.now(UTC))
    await stored(1)
    publisher.add_lines("stdout", ["INFO"] * len(flood), flood, datetime.now(UTC), "\n".join(flood))
    await stored(1 + len(flood))
    publisher.add("stdout", "INFO", "last", datetime.now(UTC))
    await asyncio.wait_for(publisher.close(), 10)
    await stored(2 + len(flood))
    assert texts == ["first", *flood, "last"]
    assert bulk.stats["out_msgs"] - bulk_before == 2
    assert nc.stats["out_msgs"] - main_before == 2


async def test_a_flood_goes_on_the_main_connection_while_the_bulk_one_is_away(
    connections: tuple[NATS, NATS], settings: Settings
) -> None:
    """The bulk connection is a fast path only: closed, the flood's messages take the main one,
    every line stored in order."""
    nc, bulk = connections
    names = Names(settings.prefix)
    texts: list[str] = []
    done = asyncio.Event()
    flood = [f"flood {i:05d} ".ljust(100, "x") for i in range(2000)]

    async def keep(msg: Msg) -> None:
        event = codec.decode(msg.data)
        assert isinstance(event, events.LineLogged)
        texts.extend(line.text for line in event.lines)
        if len(texts) >= len(flood):
            done.set()

    await nc.subscribe(names.job_kind_subject(JOB, "lines"), cb=keep)
    await nc.flush()
    lane = BulkLane(bulk, 5.0)
    await bulk.close()
    publisher = LinePublisher(nc, names, JOB, batch_max=1000, bulk=lane)
    publisher.start()
    publisher.add_lines("stdout", ["INFO"] * len(flood), flood, datetime.now(UTC), "\n".join(flood))
    await asyncio.wait_for(publisher.close(), 10)
    await asyncio.wait_for(done.wait(), 10)
    assert texts == flood
    await lane.close()


WATCHDOG_SECONDS = 120.0  # well beyond the test's own bounds (30 s twice)


async def test_the_probe_after_a_stall_leaves_the_loop_running_while_the_connection_reconnects(
    own_nats: EmbeddedNats,
) -> None:
    """The bulk connection's server frozen until its client gives the connection up and
    reconnects: the lane's probe (waiting for a PING to be answered) leaves the event loop
    running meanwhile (nats-py's flush then returns without a turn of the loop, and a probe
    that tried again at once held the whole runner for ever), and the lane is in use again
    once the server is back."""
    assert own_nats.proc is not None
    nc = await nats.connect(
        own_nats.url,
        ping_interval=0.5,
        max_outstanding_pings=1,
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
        connect_timeout=0.5,
    )
    lane = BulkLane(nc, 0.5)
    # A probe that holds the event loop stops every timeout in it, pytest-timeout's signal too:
    # a thread ends the worker (the test fails) rather than leave the run hanging.
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    try:
        with frozen(own_nats.proc.pid):
            # Not stored in time: the lane goes out of use and its probe starts.
            assert not await lane.publish("bulk.probe.test", b"x", "probe-1")
            assert not lane.usable()
            async with asyncio.timeout(30):
                while nc.is_connected:  # noqa: ASYNC110 - the client finds the server dead
                    await asyncio.sleep(0.05)
            for _ in range(20):  # turns of the loop while it reconnects (none without the fix)
                await asyncio.sleep(0.05)
            assert not nc.is_connected
        async with asyncio.timeout(30):
            while not lane.usable():  # noqa: ASYNC110 - its probe answered
                await asyncio.sleep(0.05)
    finally:
        faulthandler.cancel_dump_traceback_later()
        await lane.close()
        await nc.close()
