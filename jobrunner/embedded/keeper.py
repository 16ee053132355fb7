"""Keeps `jobrunner up`'s embedded NATS server and Postgres running: one that exits (the OOM
killer, a stray `kill -9`, a crash) is started again on its port and data, as the services are.

Without this, a dead embedded server stayed dead while `up` went on supervising services that
could only wait for it: every job, read and stream answered 503 until someone restarted `up`.
The services reconnect by themselves once the server answers again at the same address (the
runner then publishes what its tools printed meanwhile), so a start on the same port is all a
recovery needs.

A server that runs but no longer writes its data is kept too: nats-server's store, once a write
failed (a full disk), drops every publish until its next start, while it answers every read (so
nothing else notices). Its output says so (``ServerProcess.write_failed``, ``write_error``); it
is stopped and started again when ``writefailure.WriteFailures`` says: a full disk once there is
room again, another write error after a growing wait."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import Sequence

import structlog

from jobrunner.common import retry
from jobrunner.embedded.serverprocess import ServerProcess
from jobrunner.embedded.writefailure import WriteFailures

log = structlog.get_logger()

# How often a server's process is looked at: a dead one is noticed within this.
CHECK_SECONDS = 0.5
# Waits between failed starts of a server: doubling from the first, at most the longest.
FIRST_RETRY_SECONDS = 0.5
LONGEST_RETRY_SECONDS = 10.0


async def keep_running(servers: Sequence[ServerProcess], stop: asyncio.Event) -> None:
    """Start again each of ``servers`` whose process has exited, until ``stop`` is set: each in
    a task of its own, so that one that cannot start (a broken config) keeps no other waiting.
    A start in flight when ``stop`` is set is finished first (bounded by its own timeout):
    cancelled, its thread would go on and leave a server running that no one stops."""
    async with asyncio.TaskGroup() as group:
        for server in servers:
            group.create_task(_keep(server, stop))


async def _keep(server: ServerProcess, stop: asyncio.Event) -> None:
    try:
        failures = WriteFailures(server.name, server.log_file.parent)
        while not stop.is_set():
            if server.proc is not None and not server.running:
                await _start_again(server, stop)
            elif server.running and server.write_failed.is_set() and _restart_for(server, failures):
                await asyncio.to_thread(server.stop)
                await _start_again(server, stop, exited=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_SECONDS)
    except Exception:  # said, not raised: the other servers' keepers go on
        log.exception(
            f"{server.name} is no longer kept running: its keeper failed", server=server.name
        )


def _restart_for(server: ServerProcess, failures: WriteFailures) -> bool:
    """Whether ``server``, whose store failed a write, is to be started again now."""
    free = shutil.disk_usage(server.log_file.parent).free
    return failures.restart_now(server.write_error or "critical write error", free)


async def _start_again(server: ServerProcess, stop: asyncio.Event, exited: bool = True) -> None:
    """Start ``server`` again, retrying with growing waits until it starts or ``stop`` is set
    (``exited``: it exited by itself, said here; else it was stopped for a failed write)."""
    assert server.proc is not None
    if exited:
        log.warning(
            f"{server.name} exited: starting it again",
            server=server.name,
            code=server.proc.returncode,
            port=server.port,
        )
    attempt = 0
    told: str | None = None
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
            reason = _reason(error)
            # The server's last words once, and again when they change: the same ten lines
            # every ten seconds for ever would bury everything else in the log.
            detail = {"error": str(error)} if reason != told else {"reason": reason}
            told = reason
            log.error(
                f"{server.name} did not start again",
                server=server.name,
                attempt=attempt,
                retry_in=delay,
                **detail,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            continue
        log.info(f"{server.name} is running again", server=server.name, port=server.port)
        return


def _reason(error: Exception) -> str:
    """Why a start failed, the same for every attempt failing the same way: the error's last
    line without its numbers (a server's log lines carry a time and a pid of their own)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return re.sub(r"\d+", "#", lines[-1])
