"""The fault cluster starts (and restarts) its API on a port of its own, which another test's
server can take while the API is down (the workers of a CI run start servers on free ports all the
time). Its start must see that the answer on the port is not its API's, rather than send every
later request of the test to a stranger (session 34: 46 fault tests failed on with
``401 UNAUTHORIZED`` from another test's API)."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.scratch import scratch_dir
from tests.faults.cluster import SHORT_TTL, FaultCluster, in_thread
from tests.system import System


async def test_starting_the_api_fails_naming_the_port_when_another_api_answers_there(
    settings: Settings,
) -> None:
    """Another test's API (with tokens) on the cluster's API port: the API's start fails with a
    sentence naming the port and what answered there, not a start that seems to succeed."""
    with scratch_dir("jobrunner-test-faults-port-") as root:
        cluster = FaultCluster(root, SHORT_TTL)
        try:
            await in_thread(cluster.nats.start)
            await in_thread(cluster.postgres.start)
            cluster.add_service("api", "api")
            async with System(msgspec.structs.replace(settings, auth=True)) as stranger:
                stranger.port = cluster.port
                stranger.base_url = cluster.base_url
                await stranger.start_api()
                assert stranger.port == cluster.port, "the port was taken before the stranger"
                with pytest.raises(AssertionError) as failed:
                    await cluster.start_service("api")
        finally:
            await cluster.stop()
    sentence = str(failed.value)
    assert f"port {cluster.port} is not our API's: /health answered " in sentence, sentence
    assert '"instance":' in sentence, sentence  # what answered, in its own words
