"""``eventstore.stored_nothing``: which publish failures surely stored nothing (the API then
takes a job's queue entry out) and which leave the outcome unknown (the entry is kept)."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from jobrunner.common import ackinbox, eventstore


@pytest.mark.parametrize(
    "exc",
    [
        nats.js.errors.APIError(code=400, err_code=10058, description="refused"),
        nats.js.errors.ServiceUnavailableError(code=503, description="no JetStream"),
        nats.js.errors.NoStreamResponseError(),
        nats.errors.NoRespondersError(),
        nats.errors.MaxPayloadError(),
    ],
)
def test_a_refusal_stored_nothing(exc: Exception) -> None:
    assert eventstore.stored_nothing(exc)


@pytest.mark.parametrize(
    "exc",
    [
        nats.errors.TimeoutError(),
        ackinbox.AckLostWithConnection(),
        nats.errors.ConnectionClosedError(),
        TimeoutError(),
        OSError("reset"),
    ],
)
def test_an_unanswered_publish_may_be_stored(exc: Exception) -> None:
    assert not eventstore.stored_nothing(exc)
