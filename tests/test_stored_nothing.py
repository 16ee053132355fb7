"""``eventstore.stored_nothing`` against a real server: each publish failure it calls "stored
nothing" (the API then takes a queued job's entry out at once) is raised by a publish that
left the stream empty."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names


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


async def test_a_stored_publish_is_counted(settings: Settings, js: JetStreamContext) -> None:
    """The control: the count the tests above read does see a stored request."""
    names = Names(settings.prefix)
    await eventstore.publish(js, names, _request())
    assert await _stored(js, names) == 1
