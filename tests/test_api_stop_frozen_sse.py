"""The API stops within its stop_seconds with SSE clients connected while NATS and Postgres are
frozen: uvicorn cancels their streams at its graceful timeout, their feeds read on reader
connections of their own (readerconnections), and those close at the stop on a NATS that
answers nothing. Measured in session 29 before any change: 1.7 s for a stop_seconds of 1.5,
with 1 viewer and with 20 (the same as with none): bounded already; this keeps it so."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.serverprocess import free_port
from tests.tools.frozen_stop import (
    EXIT_SECONDS,
    STOP_SECONDS,
    started_service,
    stopped_frozen,
)
from tests.tools.postgres_processes import postgres_pids
from tests.tools.runners import RUNNER_TYPES

JOB_ID = "watched-at-the-stop"
VIEWERS = 20


async def _watching(client: httpx.AsyncClient, connected: asyncio.Event) -> None:
    async with client.stream("GET", f"/api/jobs/{JOB_ID}/stream") as response:
        assert response.status_code == 200, await response.aread()
        connected.set()  # its feed subscribed: the stream answers once it is
        async for _ in response.aiter_bytes():
            pass


async def test_the_api_stops_within_its_deadline_with_sse_clients_and_frozen_servers(
    settings: Settings,
    own_nats: EmbeddedNats,
    own_postgres: EmbeddedPostgres,
    tmp_path: Path,
) -> None:
    """Viewers of a job are connected when `jobrunner up` stops the API with both servers
    frozen: it exits cleanly within its stop_seconds, not killed."""
    settings = msgspec.structs.replace(
        settings,
        nats_url=own_nats.url,
        database_url=own_postgres.url,
        job_types_file=RUNNER_TYPES,
        port=free_port(),
        metrics_address=f"127.0.0.1:{free_port()}",
        stop_seconds=STOP_SECONDS,
        auth=False,
    )
    # The projector makes the read models, which the API waits for before it answers.
    projector_settings = msgspec.structs.replace(
        settings, metrics_address=f"127.0.0.1:{free_port()}"
    )
    services: list[subprocess.Popen[bytes]] = []
    watchers: list[asyncio.Task[None]] = []
    try:
        services.append(await started_service("projector", projector_settings, tmp_path))
        api = await started_service("api", settings, tmp_path)
        services.append(api)
        nc = await eventstore.connect(settings, "test")
        try:
            request = events.JobRequested(
                job_id=JOB_ID, job_type="family", occurred_at=datetime.now(UTC)
            )
            await eventstore.publish(nc.jetstream(), Names(settings.prefix), request)
        finally:
            await eventstore.close(nc)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.port}", timeout=None
        ) as client:
            connected = [asyncio.Event() for _ in range(VIEWERS)]
            watchers = [asyncio.create_task(_watching(client, c)) for c in connected]
            async with asyncio.timeout(60):
                await asyncio.gather(*(c.wait() for c in connected))
            assert own_nats.proc is not None
            took, code = await stopped_frozen(
                api, [own_nats.proc.pid, *postgres_pids(own_postgres)]
            )
            print(f"api with {VIEWERS} viewers: stop took {took:.1f} s, exit {code}")
            told = f"stop took {took:.1f} s, exit {code}:\n{(tmp_path / 'api.log').read_text()}"
            assert took < STOP_SECONDS + EXIT_SECONDS, told
            assert code == -signal.SIGTERM, told
    finally:
        for watcher in watchers:
            watcher.cancel()
        if watchers:
            # Their streams ended with the API; what they raised then is not this test's.
            await asyncio.wait(watchers)
            for watcher in watchers:
                if not watcher.cancelled():
                    watcher.exception()
        for service in services:
            if service.poll() is None:
                service.kill()
                service.wait()
