"""Each reader of a job's stream reads on a NATS connection of its own (no noisy neighbour):
a flooding job's data backs up on its own socket, never ahead of another job's lines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import Fanout, Limits
from jobrunner.services.api.readerconnections import ReaderConnections
from tests.tools.waiting import until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def own_settings(nats_server_url: str) -> Settings:
    return Settings(nats_url=nats_server_url, prefix=f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def main_js(own_settings: Settings) -> AsyncIterator[JetStreamContext]:
    nc = await eventstore.connect(own_settings, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, Names(own_settings.prefix), own_settings)
    yield js
    await js.delete_stream(Names(own_settings.prefix).stream)
    await eventstore.close(nc)


def pool(settings: Settings, keep_idle: int = 8) -> ReaderConnections:
    return ReaderConnections(lambda: eventstore.connect(settings, "test-reader"), keep_idle)


def connection(js: JetStreamContext) -> NATS:
    nc: NATS = js._nc
    return nc


async def test_readers_at_the_same_time_each_have_a_connection_of_their_own(
    own_settings: Settings,
) -> None:
    """Two readers at once never share a socket."""
    readers = pool(own_settings)
    try:
        async with readers.lease() as first, readers.lease() as second:
            assert connection(first) is not connection(second)
            assert readers.lent == 2
    finally:
        await readers.close()


async def test_a_connection_handed_back_serves_the_next_reader(own_settings: Settings) -> None:
    """A viewer joining after another left waits for no new handshake."""
    readers = pool(own_settings)
    try:
        await readers.warm()
        async with readers.lease() as first:
            used = connection(first)
        async with readers.lease() as second:
            assert connection(second) is used
        assert readers.opened == 1
    finally:
        await readers.close()


async def test_connections_beyond_the_kept_ones_are_closed_when_handed_back(
    own_settings: Settings,
) -> None:
    """After a burst of readers the API keeps only a few connections open."""
    readers = pool(own_settings, keep_idle=1)
    try:
        async with readers.lease() as first, readers.lease() as second:
            ncs = [connection(first), connection(second)]
        assert readers.idle == 1
        await until(
            lambda: any(nc.is_closed for nc in ncs), "a reader connection closed", seconds=10
        )
    finally:
        await readers.close()


async def test_readers_beyond_the_cap_share_the_least_used_connection(
    own_settings: Settings,
) -> None:
    """A thousand viewers joining at once do not open a thousand connections."""
    readers = ReaderConnections(
        lambda: eventstore.connect(own_settings, "test-reader"), max_connections=2
    )
    try:
        async with readers.lease() as first, readers.lease() as second:
            async with readers.lease() as third:
                assert connection(third) in (connection(first), connection(second))
                async with readers.lease() as fourth:
                    # The third reader's connection has two readers: the fourth takes the other.
                    assert connection(fourth) is not connection(third)
                    assert readers.lent == 2
            assert readers.opened == 2
        assert readers.idle == 2
    finally:
        await readers.close()


async def test_a_connection_no_longer_connected_is_not_lent_again(
    own_settings: Settings,
) -> None:
    """A kept connection that lost its server is replaced by a fresh one."""
    readers = pool(own_settings)
    try:
        async with readers.lease() as first:
            lost = connection(first)
        await lost.close()
        async with readers.lease() as second:
            assert connection(second) is not lost
            assert connection(second).is_connected
    finally:
        await readers.close()


async def test_closing_closes_the_connections_still_lent(own_settings: Settings) -> None:
    """An API that stops leaves no reader's connection open."""
    readers = pool(own_settings)
    async with readers.lease() as js:
        await readers.close()
        assert connection(js).is_closed


async def test_each_jobs_feed_reads_on_its_own_connection(
    own_settings: Settings, main_js: JetStreamContext
) -> None:
    """Two jobs watched at once: each job's live feed subscribes on a connection of its own,
    none on the API's main one, and both connections are kept for later feeds."""
    names = Names(own_settings.prefix)
    readers = pool(own_settings)
    limits = Limits(keepalive=1, client_bytes=1 << 20, total_bytes=8 << 20, history_idle=2)
    fanout = Fanout(main_js, names, sse.frames_for, limits, readers)
    try:
        feed_a, inbox_a, _ = await fanout.join("joba")
        feed_b, inbox_b, _ = await fanout.join("jobb")
        assert readers.lent == 2
        line = events.LogLine(1, "stdout", "INFO", datetime.now(UTC), "hello")
        await eventstore.publish(main_js, names, events.LineLogged(job_id="jobb", lines=[line]))
        async with asyncio.timeout(10):
            await inbox_b.wakeup.wait()
        assert [item.seq for item in inbox_b.take()]
        assert not inbox_a.has_items
        feed_a.leave(inbox_a)
        feed_b.leave(inbox_b)
        await until(lambda: readers.lent == 0, "every reader connection given back", seconds=10)
        assert readers.idle == 2
    finally:
        await readers.close()


async def test_a_kept_connection_serves_the_next_reader_after_nats_restarted(
    tmp_path: Path,
) -> None:
    """NATS killed and started again while no one watches: the next viewer's feed still gets
    the job's events (on the kept connection once reconnected, else on a fresh one)."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    settings = Settings(nats_url=server.url, prefix=f"t{uuid.uuid4().hex[:10]}")
    names = Names(settings.prefix)
    readers = pool(settings)
    main: NATS | None = None
    try:
        await readers.warm()
        assert server.proc is not None
        server.proc.kill()  # the fault: SIGKILL, not a clean stop
        server.proc.wait()
        server = EmbeddedNats(server.store_dir, port=server.port)
        server.start()
        main = await eventstore.connect(settings, "test")
        js = main.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        limits = Limits(keepalive=1, client_bytes=1 << 20, total_bytes=8 << 20, history_idle=2)
        fanout = Fanout(js, names, sse.frames_for, limits, readers)
        feed, inbox, _ = await fanout.join("job")
        assert not inbox.overflow
        line = events.LogLine(1, "stdout", "INFO", datetime.now(UTC), "after the restart")
        seq = await eventstore.publish(js, names, events.LineLogged(job_id="job", lines=[line]))
        async with asyncio.timeout(20):
            await inbox.wakeup.wait()
        assert [item.seq for item in inbox.take()] == [seq]
        feed.leave(inbox)
    finally:
        await readers.close()
        if main is not None:
            await eventstore.close(main)
        server.stop()
