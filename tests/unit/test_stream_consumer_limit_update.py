"""Whether start-up may change the event stream's consumer limit: nats-server before 2.12.5
(2.10, 2.11, 2.12.0 to 2.12.4) refuses a stream update that changes MaxConsumers, and a refused
update at start would stop every service for good."""

from __future__ import annotations

import pytest
from nats.aio.client import ServerVersion
from nats.js import api
from nats.js.errors import APIError

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names


@pytest.mark.parametrize(
    ("version", "changeable"),
    [
        ("2.10.22", False),
        ("2.11.4", False),
        ("2.12.0", False),
        ("2.12.4", False),
        ("2.12.5", True),
        ("2.14.0", True),
        ("2.15.1", True),
        ("3.0.0", True),
        ("0.0.0-unknown", True),  # not known: tried, a refusal keeps the old limit
    ],
)
def test_the_consumer_limit_changes_only_on_a_server_that_allows_it(
    version: str, changeable: bool
) -> None:
    assert eventstore.can_change_consumer_limit(ServerVersion(version)) is changeable


def test_the_servers_refusal_to_change_max_consumers_is_recognised() -> None:
    """As the server sends it: a 500 (nats-py's ServerError), built by nats-py itself."""
    with pytest.raises(APIError) as refused:
        APIError.from_error(
            {
                "code": 500,
                "err_code": 10052,
                "description": "stream configuration update can not change MaxConsumers",
            }
        )
    assert eventstore.refuses_consumer_limit_change(refused.value)
    with pytest.raises(APIError) as other:
        APIError.from_error(
            {
                "code": 500,
                "err_code": 10052,
                "description": "stream configuration update can not change Storage",
            }
        )
    assert not eventstore.refuses_consumer_limit_change(other.value)


def test_keeping_the_old_limit_still_applies_the_other_settings() -> None:
    names = Names("t")
    existing = eventstore.stream_config(names, Settings())
    existing.max_consumers = -1
    existing.max_bytes = None
    wanted = eventstore.stream_config(names, Settings(stream_max_bytes=1 << 30))
    kept = eventstore.keeping_consumer_limit(wanted, existing)
    assert kept.max_consumers == -1
    assert kept.max_bytes == 1 << 30
    assert wanted.max_consumers == Settings().stream_max_consumers  # the setting's own untouched
    assert isinstance(kept, api.StreamConfig)
