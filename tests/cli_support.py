"""The ``jobrunner`` command run as a user runs it: a child process, configured by environment."""

from __future__ import annotations

import asyncio
import os
import sys

from jobrunner.common.settings import Settings


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment that points the command at the test's NATS, Postgres and prefix."""
    return {
        "JOBRUNNER_NATS_URL": settings.nats_url,
        "JOBRUNNER_DATABASE_URL": settings.database_url,
        "JOBRUNNER_PREFIX": settings.prefix,
    }


async def start_cli(
    *args: str, env: dict[str, str], output: int | None = None
) -> asyncio.subprocess.Process:
    """``jobrunner <args>`` started as a child process with ``env`` over this process's
    environment; its standard output and error both to ``output`` (a pipe, DEVNULL, or
    inherited: None)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        *args,
        env={**os.environ, **env},
        stdout=output,
        stderr=asyncio.subprocess.STDOUT if output == asyncio.subprocess.PIPE else output,
    )


async def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[str, str]:
    """``jobrunner <args>`` with ``env`` over this process's environment: its standard output and
    standard error. A non-zero exit fails the test, showing what the command said."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()
