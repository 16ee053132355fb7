"""The oldest nats-server jobrunner starts on (``serverversion.require_supported``)."""

from __future__ import annotations

import pytest
from nats.aio.client import ServerVersion

from jobrunner.common.serverversion import NatsServerTooOld, require_supported


@pytest.mark.parametrize(
    "version", ["2.11.1", "2.11.0", "2.11.1-RC.1", "2.10.26", "2.9.25", "1.4.1", "2.10.99-RC.1"]
)
def test_a_version_before_2_11_2_is_refused_naming_it_and_the_one_needed(version: str) -> None:
    with pytest.raises(NatsServerTooOld) as refused:
        require_supported(ServerVersion(version))
    assert refused.value.code == "nats_server_too_old"
    assert refused.value.found == version.split("-")[0]
    assert refused.value.needed == "2.11.2"
    assert str(refused.value).startswith(f"nats_server_too_old: nats-server {refused.value.found}")


@pytest.mark.parametrize("version", ["2.11.2", "2.11.11", "2.12.0-RC.1", "2.15.1", "3.0.0"])
def test_2_11_2_and_later_start(version: str) -> None:
    require_supported(ServerVersion(version))


@pytest.mark.parametrize("version", ["0.0.0-unknown", "not-a-version"])
def test_a_version_that_cannot_be_read_is_left_to_the_server(version: str) -> None:
    require_supported(ServerVersion(version))
