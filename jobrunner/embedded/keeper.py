"""Keeps `jobrunner up`'s embedded NATS server and Postgres running: one that exits (the OOM
killer, a stray `kill -9`, a crash) is started again on its port and data, as the services are.

Without this, a dead embedded server stayed dead while `up` went on supervising services that
could only wait for it: every job, read and stream answered 503 until someone restarted `up`.
The services reconnect by themselves once the server answers again at the same address (the
runner then publishes what its tools printed meanwhile), so a start on the same port is all a
recovery needs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from jobrunner.common import retry
from jobrunner.embedded.serverprocess import ServerProcess

log = structlog.get_logger()

# How often a server's process is looked at: a dead one is noticed within this.
CHECK_SECONDS = 0.5
# Waits between failed starts of a server: doubling from the first, at most the longest.
FIRST_RETRY_SECONDS = 0.5
LONGEST_RETRY_SECONDS = 10.0


async def keep_running(servers: Sequence[ServerProcess], stop: asyncio.Event) -> None:
    """Start again each of ``servers`` whose process has exited, until ``stop`` is set."""
    for server in servers:
        # Its clients know it at this port: a restart must not move it (a port chosen at the
        # first start may be tried elsewhere when taken; then it no longer may).
        server.port_flag = None
    while not stop.is_set():
        for server in servers:
            if server.proc is not None and not server.running and not stop.is_set():
                await _start_again(server, stop)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CHECK_SECONDS)


async def _start_again(server: ServerProcess, stop: asyncio.Event) -> None:
    """Start ``server`` again, retrying with growing waits until it starts or ``stop`` is set."""
    assert server.proc is not None
    log.warning(
        f"{server.name} exited: starting it again",
        server=server.name,
        code=server.proc.returncode,
        port=server.port,
    )
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            # What is left of it first (Postgres' backends hold its shared memory after the
            # postmaster's death, and the next start would be refused for it).
            await asyncio.to_thread(server.kill)
            await asyncio.to_thread(server.start)
        except Exception as error:  # any failure of a start is retried: the server is needed
            delay = retry.delay_after(
                attempt, first=FIRST_RETRY_SECONDS, longest=LONGEST_RETRY_SECONDS
            )
            log.error(
                f"{server.name} did not start again",
                server=server.name,
                error=str(error),
                retry_in=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            continue
        log.info(f"{server.name} is running again", server=server.name, port=server.port)
        return
