"""A service's stop ends within the supervisor's SIGTERM grace even when NATS and Postgres are
both frozen at once: `jobrunner up` SIGKILLs a service still stopping after 20 s, and a killed
service is not a clean stop.

Each service runs as a real process (``python -m jobrunner.cli <service>``) on a NATS and a
Postgres of the test's own; both are frozen for real (SIGSTOP of nats-server, the postmaster
and every backend), then the service gets its SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

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
from tests.tools.runners import RUNNER_TYPES, wait_dead


async def _heartbeat_written(settings: Settings) -> None:
    """Until the runner's heartbeat is in its bucket: its stop then deletes the key (a request
    NATS, frozen, does not answer), and waits for the beat's end, which a first beat before the
    bucket was made leaves out."""
    nc = await eventstore.connect(settings, "test")
    try:
        async with asyncio.timeout(60):
            while True:
                with contextlib.suppress(Exception):  # no bucket or no key yet
                    kv = await nc.jetstream().key_value(Names(settings.prefix).runners_bucket)
                    if await kv.keys():
                        return
                await asyncio.sleep(0.1)
    finally:
        await eventstore.close(nc)


async def _run_a_job(settings: Settings, pidfile: Path) -> list[int]:
    """A job of a tool whose grandchild ignores SIGTERM, running on the runner: their pids."""
    nc = await eventstore.connect(settings, "test")
    try:
        request = events.JobRequested(
            job_id="running-at-the-stop",
            job_type="family",
            parameters={"pidfile": str(pidfile)},
            occurred_at=datetime.now(UTC),
        )
        await eventstore.publish(nc.jetstream(), Names(settings.prefix), request)
    finally:
        await eventstore.close(nc)
    async with asyncio.timeout(60):
        while len(pids := pidfile.read_text().split() if pidfile.exists() else []) < 2:  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.05)
    return [int(pid) for pid in pids]


# A beat each second: the first one, before the runner made the bucket, is not written.
BEAT_SECONDS = 1.0
# A beat every 50 ms, and the SIGTERM a second after NATS froze: a beat's put to a frozen NATS
# waits for its ack until its timeout (nats-py's JetStream default, 5 s), so the runner (given
# twenty beats' time to reach its next put, on a loaded machine too) is writing one at its
# stop, and the stop's cancel of the heartbeat comes in that write.
BEAT_WRITING_SECONDS = 0.05
WRITING_AT_THE_STOP_AFTER = 1.0


@pytest.mark.parametrize(
    ("service", "with_a_job", "heartbeat_seconds"),
    [
        ("api", False, BEAT_SECONDS),
        ("runner", False, BEAT_SECONDS),
        ("runner", True, BEAT_SECONDS),
        ("runner", False, BEAT_WRITING_SECONDS),
        ("projector", False, BEAT_SECONDS),
        ("notifier", False, BEAT_SECONDS),
    ],
    ids=["api", "runner", "runner-with-a-job", "runner-mid-heartbeat", "projector", "notifier"],
)
async def test_a_service_stops_within_the_grace_with_nats_and_postgres_frozen(
    settings: Settings,
    own_nats: EmbeddedNats,
    own_postgres: EmbeddedPostgres,
    tmp_path: Path,
    service: str,
    with_a_job: bool,
    heartbeat_seconds: float,
) -> None:
    """`jobrunner up` stopping a service while both servers are frozen sees it exit cleanly
    within its stop_seconds (so before the supervisor's grace ends), not killed; a runner's
    job's tool dies with it (its ending could not be stored: the job ends RUNNER_LOST)."""
    settings = msgspec.structs.replace(
        settings,
        nats_url=own_nats.url,
        database_url=own_postgres.url,
        job_types_file=RUNNER_TYPES,
        runner_heartbeat_seconds=heartbeat_seconds,
        port=free_port(),
        metrics_address=f"127.0.0.1:{free_port()}",
        stop_seconds=STOP_SECONDS,
    )
    proc = await started_service(service, settings, tmp_path)
    log_file = tmp_path / f"{service}.log"
    try:
        if service == "runner":
            await _heartbeat_written(settings)
        tools = await _run_a_job(settings, tmp_path / "pids") if with_a_job else []
        assert own_nats.proc is not None
        frozen = [own_nats.proc.pid, *postgres_pids(own_postgres)]
        mid_heartbeat = heartbeat_seconds == BEAT_WRITING_SECONDS
        took, code = await stopped_frozen(
            proc, frozen, WRITING_AT_THE_STOP_AFTER if mid_heartbeat else 0.0
        )
        print(f"{service}: stop took {took:.1f} s, exit {code}")  # the figures, with -s
        told = f"stop took {took:.1f} s, exit {code}:\n{log_file.read_text()}"
        assert took < STOP_SECONDS + EXIT_SECONDS, told
        # uvicorn ends the API by raising the SIGTERM it caught again, once its stop is done.
        assert code == (-signal.SIGTERM if service == "api" else 0), told
        for pid in tools:
            await wait_dead(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
