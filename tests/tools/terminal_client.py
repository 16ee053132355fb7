"""The ``jobrunner`` terminal client run against a test's system as a user runs it: a child
process pointed at the API by ``JOBRUNNER_URL`` (and ``JOBRUNNER_TOKEN``), its exit code and
output kept for the test."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.system import System


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


def client_env(system: System, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    env["JOBRUNNER_URL"] = system.base_url
    if token:
        env["JOBRUNNER_TOKEN"] = token
    return env


def terminal_env(system: System) -> dict[str, str]:
    """``client_env`` (the admin token) for a client that takes its pipe for a terminal, as
    rich does with ``TTY_COMPATIBLE=1``: colours (the 16 standard ones), a progress bar."""
    env = client_env(system, system.admin_token)
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    env.update(TTY_COMPATIBLE="1", TERM="xterm")
    return env


async def start_client(
    system: System, *args: str, token: str | None = "admin", env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """The client as a child process with ``client_env`` for ``token`` ("admin": the system's
    admin token; None: none); or with ``env`` as given, whole, when a test passes its own (then
    ``token`` is not used: put the token in ``env``)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        *args,
        env=env
        if env is not None
        else client_env(system, system.admin_token if token == "admin" else token),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> Run:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def jobrunner(system: System, *args: str, token: str | None = "admin") -> Run:
    return await finish(await start_client(system, *args, token=token))
