"""Publishing through a NATS server that stops answering: pauses just shorter and just longer than
the publish timeout. The job completes and every line is stored once, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import msgspec

from jobrunner.common import ackinbox
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import frozen
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, lines_of, start_job, wait_job, wait_status

# The runner publishes a job's lines and events through the connection's ack inbox, which waits
# this long for each ack before publishing again.
PUBLISH_TIMEOUT = ackinbox.ACK_TIMEOUT
LINES = 300


@contextlib.contextmanager
def paused(server: EmbeddedNats) -> Iterator[None]:
    assert server.proc is not None
    with frozen(server.proc.pid):
        yield


async def _job_through_a_pause(settings: Settings, server: EmbeddedNats, pause: float) -> None:
    # A lease far longer than the pause and the job: this test is about publishing, so no lease
    # renewal may fall inside the outage.
    settings = msgspec.structs.replace(
        settings, nats_url=server.url, job_types_file=RUNNER_TYPES, lease_ttl_seconds=90.0
    )
    system = System(settings)
    try:
        await system.start()
        async with system.client() as client:
            job_id = await start_job(client, "emit", lines=LINES, interval="0.02")
            await wait_job(client, job_id, lambda j: j["log_count"] >= 20)
            with paused(server):
                # The fault itself: the server answers nothing for this long while the tool
                # goes on printing.
                await asyncio.sleep(pause)
            job = await wait_status(client, job_id, "completed", "failed", timeout=90)
            lines = await lines_of(client, job_id)
    finally:
        await system.stop()
    assert job["status"] == "completed", job
    numbers = range(1, LINES + 1)
    assert [ln["seq"] for ln in lines] == list(numbers)
    assert [ln["text"] for ln in lines] == [f"INFO line {i} [{i}/{LINES}]" for i in numbers]


async def test_nats_pause_shorter_than_publish_timeout_loses_no_line(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS silent for a little less than the publish timeout: the job completes, all lines."""
    await _job_through_a_pause(settings, own_nats, PUBLISH_TIMEOUT - 1.0)


async def test_nats_pause_longer_than_publish_timeout_loses_no_line(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS silent for longer than the publish timeout: publishes retry, the job completes."""
    await _job_through_a_pause(settings, own_nats, PUBLISH_TIMEOUT + 1.5)
