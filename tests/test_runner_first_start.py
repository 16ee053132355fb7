"""A runner's first start, on a NATS with none of jobrunner's streams or buckets yet, is quiet:
its heartbeat's first beat no longer comes before the runners bucket it writes to."""

from __future__ import annotations

import asyncio
import time

from nats.js.errors import BucketNotFoundError, NoKeysError
from structlog.testing import capture_logs

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.system import System


async def runners_alive(settings: Settings, timeout: float = 60) -> list[str]:
    """The runners bucket's keys once it has one (a heartbeat written), polled until ``timeout``."""
    nc = await eventstore.connect(settings, "test-heartbeat")
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            try:
                kv = await js.key_value(Names(settings.prefix).runners_bucket)
                keys = await kv.keys()
                if keys:
                    return list(keys)
            except (BucketNotFoundError, NoKeysError):  # not made yet, or no beat in it yet
                pass
            assert time.monotonic() < deadline, "no runner heartbeat was written"
            await asyncio.sleep(0.2)
    finally:
        await eventstore.close(nc)


async def test_a_first_start_writes_the_heartbeat_without_a_warning(settings: Settings) -> None:
    """The runner's first start logs no "runner heartbeat not written" and its beat is there."""
    system = System(settings)
    with capture_logs() as logs:
        await system.start_runner()
        try:
            assert await runners_alive(settings)
        finally:
            await system.stop_service("runner")
    warnings = [entry for entry in logs if entry["event"] == "runner heartbeat not written"]
    assert warnings == []
