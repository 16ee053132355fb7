"""NATS going silent for a test: a real nats-server of the test's own frozen (every thread
stopped) for a while, against the API's bound ``nats_silence_seconds``, with a freeze just
shorter and just longer than it."""

from __future__ import annotations

import asyncio

import httpx

from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api.natswatch import PROBES_PER_BOUND
from tests.freeze import freeze, thaw_later
from tests.freeze import thaw as thaw_processes

BOUND = 3.0
# A probe sent during a freeze is answered as the server thaws: it waits the freeze at most,
# plus the time to read the answer on a loaded machine (the second of margin).
SHORTER = BOUND - 1.0
# Past the bound, and past the probe that may be sent up to an interval after the freeze began.
LONGER = BOUND + BOUND / PROBES_PER_BOUND + 1.5


def thaw(server: EmbeddedNats) -> None:
    """Let a frozen server run again."""
    assert server.proc is not None
    thaw_processes(server.proc.pid)


def thaw_after(own_nats: EmbeddedNats, seconds: float) -> asyncio.TimerHandle:
    """Freeze the server now (every thread stopped) and let it run again ``seconds`` later."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    freeze(pid)
    return thaw_later(seconds, pid)


async def started_job(client: httpx.AsyncClient, lines: int) -> str:
    """An ``emit`` job of ``lines`` lines, 50 ms apart (tests/tools/jobtypes.toml)."""
    created = await client.post(
        "/api/jobs", json={"job_type": "emit", "parameters": {"lines": lines, "interval": "0.05"}}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])
