"""A test's own API child (tests/tools/service_processes.py) is waited for by the name it answers
/health with: another program on its port (which a CI worker may have taken) fails the wait
naming the port, instead of passing it off as the API (before session 35 any 200 would do)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.serverprocess import free_port
from tests.tools.api_address import NotOurApi
from tests.tools.service_processes import ServiceProcess, wait_api_healthy
from tests.tools.stranger_server import stranger_on


async def test_waiting_for_an_api_child_fails_when_another_program_answers_healthy(
    settings: Settings, tmp_path: Path
) -> None:
    """A web server answering /health with 200 on the API child's port: the wait fails with a
    sentence naming the port, not a start that seems to succeed."""
    port = free_port()
    api = ServiceProcess("api", settings, tmp_path / "api.log", host="127.0.0.1", port=port)
    with stranger_on(port, 200, b'{"status": "ok"}'):
        api.start()
        try:
            with pytest.raises(NotOurApi, match=f"port {port} is not our API's"):
                await wait_api_healthy(api)
        finally:
            api.stop()
