"""A jobrunner service as a process of its own (``python -m jobrunner.cli <service>``), as
``jobrunner up`` and a compose file start it: started, restarted, waited for and stopped by a
test."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from jobrunner.common.settings import Settings
from tests.tools.api_address import ApiAddress, new_instance_name
from tests.tools.runners import REPO, runner_env


class ServiceProcess:
    """``python -m jobrunner.cli <service>`` as a child process with these settings, its output
    in ``log_file`` (shared by its lives)."""

    def __init__(self, service: str, settings: Settings, log_file: Path, **overrides: Any) -> None:
        self.service = service
        # An API answers /health with a name of its own, the same in each of its lives: a wait
        # for it takes no other answer (another program that took its port while it was down).
        self.address: ApiAddress | None = None
        if service == "api":
            self.address = ApiAddress(
                overrides.get("port", settings.port),
                overrides.get("api_instance_id") or new_instance_name("service-api"),
            )
            overrides["api_instance_id"] = self.address.instance
        self.env = runner_env(settings, **overrides)
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jobrunner.cli", self.service],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            while self.proc.poll() is None:  # noqa: ASYNC110 - nothing to wait on but the child
                await asyncio.sleep(0.05)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_api_healthy(api: ServiceProcess) -> None:
    """Until the API child answers /health with 200, naming itself (it refuses connections
    while it starts); another program's answer on its port fails the wait (NotOurApi)."""
    assert api.address is not None, "not an API"
    async with asyncio.timeout(30):
        while await api.address.health_status() != 200:
            assert api.proc is not None
            assert api.proc.poll() is None, api.log_file.read_text()
            await asyncio.sleep(0.05)
