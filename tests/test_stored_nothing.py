"""``eventstore.stored_nothing`` against a real server: each publish failure it calls "stored
nothing" (the API then takes a queued job's entry out at once) is raised by a publish that
left the stream empty."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats


def _request(**parameters: str) -> events.JobRequested:
    return events.JobRequested(
        job_id=events.new_job_id(), job_type="emit", parameters=dict(parameters)
    )


async def _stored(js: JetStreamContext, names: Names) -> int:
    return (await js.stream_info(names.stream)).state.messages


async def test_a_publish_no_stream_takes_stored_nothing(
    settings: Settings, js: JetStreamContext
) -> None:
    elsewhere = Names(settings.prefix + "nostream")  # no stream takes its subjects
    # The server answers "no responders" (a 503 status), which ``read_ack`` raises as this.
    with pytest.raises(nats.js.errors.NoStreamResponseError) as raised:
        await eventstore.publish(js, elsewhere, _request())
    assert eventstore.stored_nothing(raised.value), repr(raised.value)
    assert await _stored(js, Names(settings.prefix)) == 0


async def test_a_publish_over_max_payload_stored_nothing(
    settings: Settings, js: JetStreamContext
) -> None:
    names = Names(settings.prefix)
    too_large = _request(text="x" * js._nc.max_payload)
    with pytest.raises(nats.errors.MaxPayloadError) as raised:
        await eventstore.publish(js, names, too_large)
    assert eventstore.stored_nothing(raised.value)
    assert await _stored(js, names) == 0


async def test_a_publish_jetstream_refused_stored_nothing(
    settings: Settings, js: JetStreamContext
) -> None:
    names = Names(settings.prefix)
    with pytest.raises(nats.js.errors.APIError) as raised:
        # The job's subject holds nothing, not a message at sequence 5: refused.
        await eventstore.publish_acked(js, names, _request(), expected_last=5)
    assert raised.value.err_code == eventstore.WRONG_LAST_SEQUENCE
    assert eventstore.stored_nothing(raised.value)
    assert await _stored(js, names) == 0


async def test_a_publish_on_a_closed_connection_stored_nothing(
    settings: Settings, js: JetStreamContext
) -> None:
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "closed")
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError) as raised:
        await eventstore.publish(nc.jetstream(), names, _request())
    assert eventstore.stored_nothing(raised.value)
    assert await _stored(js, names) == 0


async def test_a_publish_on_a_draining_connection_stored_nothing(
    settings: Settings, js: JetStreamContext
) -> None:
    """A service stopping drains its connection: the subscriptions first (here one whose
    handler is still busy holds the drain there), then the publishes. A publish meanwhile raises
    ``ConnectionDrainingError`` before it writes anything: from the ack inbox's subscribe, as
    here (a connection that had not published yet), or from nats-py's publish once the
    subscriptions are drained."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "draining")
    busy, done = asyncio.Event(), asyncio.Event()

    async def handle(_msg: object) -> None:
        busy.set()
        await done.wait()

    subject = nc.new_inbox()  # no stream takes it
    await nc.subscribe(subject, cb=handle)
    await nc.publish(subject, b"")
    await asyncio.wait_for(busy.wait(), 10)
    draining = asyncio.create_task(nc.drain())
    try:
        async with asyncio.timeout(10):
            while not nc.is_draining:  # noqa: ASYNC110  # nats-py's state: no event to wait on
                await asyncio.sleep(0)
        with pytest.raises(nats.errors.ConnectionDrainingError) as raised:
            await eventstore.publish(nc.jetstream(), names, _request())
    finally:
        done.set()
        await draining
    assert eventstore.stored_nothing(raised.value)
    assert await _stored(js, names) == 0


async def test_a_publish_while_reconnecting_with_the_buffer_full_stored_nothing(
    own_nats: EmbeddedNats,
) -> None:
    """While NATS is away nats-py holds what is published for the next connection, up to its
    buffer's size (``pending_size``; small here). A publish that would overflow it raises
    ``OutboundBufferLimitError`` before anything is written; the one held before it is sent
    once NATS is back, and stored."""
    settings = Settings(nats_url=own_nats.url, prefix="bufferfull")
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "buffer", pending_size=4096)
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        await eventstore.publish(js, names, _request())  # the ack inbox subscribed
        own_nats.stop()
        async with asyncio.timeout(10):
            while nc.is_connected:  # noqa: ASYNC110  # nats-py's state: no event to wait on
                await asyncio.sleep(0.01)
        held = asyncio.create_task(eventstore.publish(js, names, _request(text="x" * 1000)))
        await asyncio.sleep(0.1)  # its publish is in nats-py's buffer, its ack awaited
        assert not held.done(), repr(held)
        with pytest.raises(nats.errors.OutboundBufferLimitError) as raised:
            await eventstore.publish(js, names, _request(text="y" * 4096))
        assert eventstore.stored_nothing(raised.value)
        await asyncio.to_thread(own_nats.start)
        await asyncio.wait_for(held, 30)
        assert await _stored(js, names) == 2  # the first publish and the held one, not this
    finally:
        await nc.close()


async def test_a_stored_publish_is_counted(settings: Settings, js: JetStreamContext) -> None:
    """The control: the count the tests above read does see a stored request."""
    names = Names(settings.prefix)
    await eventstore.publish(js, names, _request())
    assert await _stored(js, names) == 1
