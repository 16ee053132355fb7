"""`jobrunner up` stops, instead of restarting a service, when the service refused the stored state
(exit code 78): a restart would only refuse again."""

from __future__ import annotations

import asyncio
import sys

import pytest

from jobrunner.common.refusal import REFUSED_EXIT
from jobrunner.supervisor import Service, _supervise, wait_healthy


async def exited_with(code: int, name: str = "projector") -> Service:
    service = Service(name, {})
    service.proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"raise SystemExit({code})"
    )
    await service.proc.wait()
    return service


async def test_a_service_that_refused_stops_the_supervisor() -> None:
    """A service exiting 78 ends the supervision with a sentence naming it, not a restart."""
    refused = await exited_with(REFUSED_EXIT)
    with pytest.raises(RuntimeError, match="the projector refused to start; jobrunner stops"):
        await asyncio.wait_for(_supervise({"projector": refused}, asyncio.Event()), 10)
    assert refused.restarts == 0


async def test_a_service_that_refused_during_start_up_stops_the_wait_for_health() -> None:
    """While `jobrunner up` waits for the API's health, a service that refused ends the wait at
    once instead of after the health timeout."""
    api = Service("api", {})
    refused = await exited_with(REFUSED_EXIT)
    with pytest.raises(RuntimeError, match="the projector refused to start"):
        # Nothing listens there: only the refusal can end the wait before its timeout.
        await wait_healthy("http://127.0.0.1:9", api, timeout=30, others=(api, refused))
