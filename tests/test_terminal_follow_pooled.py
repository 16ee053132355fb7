"""``jobrunner logs --follow`` whose reconnect goes out on a connection kept from an answer
before (HTTP keep-alive): a real API answered the stream 503 (its read models are a newer
jobrunner's) and then froze (SIGSTOP), so the reconnect's answer never comes. The time left of
``--reconnect-for`` must bound that attempt too: the follow gives up saying the API sent no
stream line in the time left. The bound's timer started as the TCP connection was made (httpx's
trace extension), which a connection taken from the pool never reports: the attempt waited for
the whole read timeout (``SILENT_STREAM_SECONDS``, 60 s) and gave up late, on a ReadTimeout."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from rich.console import Console

from jobrunner.common import readmodelversion
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.terminal import follow
from jobrunner.terminal.connection import EXIT_UNREACHABLE, Api, ClientError, Target
from tests.freeze import freeze, thaw
from tests.system import System
from tests.tools.service_processes import ServiceProcess

pytestmark = pytest.mark.timeout(120)

RECONNECT_FOR = 6.0
# Far past the time left: a give-up at the read timeout says ReadTimeout, not the bound.
SILENT = 40.0


@pytest.fixture
def settings(settings: Settings, own_postgres: EmbeddedPostgres) -> Settings:
    """A Postgres of the test's own: its read models' version is changed."""
    return msgspec.structs.replace(settings, database_url=own_postgres.url)


async def newer_read_models(system: System) -> None:
    """The read models made (the projector's start, health ok), then marked a newer
    jobrunner's."""
    await system.start_projector()
    await system.start_api()
    await system.wait_healthy()
    await system.stop_service("projector")
    await system.stop_api()
    conn = await asyncpg.connect(system.settings.database_url)
    try:
        await conn.execute(
            f"UPDATE {READ_SCHEMA}.{readmodelversion.VERSION_TABLE} SET version = $1",
            readmodelversion.READMODEL_VERSION + 1,
        )
    finally:
        await conn.close()


async def refusing_newer(system: System, api: ServiceProcess) -> None:
    """Until the API child answers that the read models are a newer jobrunner's."""
    async with system.client() as client, asyncio.timeout(60):
        while True:
            assert api.proc is not None
            assert api.proc.poll() is None, api.log_file.read_text()
            with contextlib.suppress(httpx.TransportError):
                answer = await client.get("/api/jobs")
                if answer.status_code == 503 and "READ_MODELS_NEWER" in answer.text:
                    return
            await asyncio.sleep(0.05)


class PausedUntil:
    """``time`` for the follow: its ``sleep`` (the pause before a reconnect) first waits for
    ``event``; the rest is ``time``'s."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def sleep(self, seconds: float) -> None:
        self._event.wait(60)
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def test_a_reconnect_on_a_kept_connection_to_a_frozen_api_is_bounded_by_the_time_left(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream answered 503 on a connection kept open; the API froze before the reconnect,
    which goes out on that connection: the follow gives up within ``--reconnect-for``, saying
    the API sent no stream line in the time left (exit 69)."""
    frozen_api = threading.Event()
    # The pause before the reconnect ends once the API is frozen, however long freezing takes.
    monkeypatch.setattr(follow, "time", PausedUntil(frozen_api))
    monkeypatch.setattr(follow, "SILENT_STREAM_SECONDS", SILENT)
    async with System(settings) as system:
        await newer_read_models(system)
        api = ServiceProcess(
            "api", settings, tmp_path / "api.log", host="127.0.0.1", port=system.port
        )
        api.start()
        frozen = False
        try:
            await refusing_newer(system, api)
            said = io.StringIO()
            client = Api(Target(system.base_url, system.admin_token, "--url"))
            following = follow.Follower(
                client,
                "0" * 32,
                Console(file=io.StringIO()),
                reconnect_for=RECONNECT_FOR,
                notices=Console(file=said, width=500),
            )
            run = asyncio.ensure_future(asyncio.to_thread(following.run))
            try:
                async with asyncio.timeout(30):
                    while "lost (" not in said.getvalue():  # noqa: ASYNC110
                        await asyncio.sleep(0.02)  # the 503 came: the reconnect waits
                assert api.proc is not None
                await asyncio.to_thread(freeze, api.proc.pid)
                frozen = True
                frozen_api.set()
                with pytest.raises(ClientError) as raised:
                    async with asyncio.timeout(SILENT + 30):
                        await run
            finally:
                if not run.done():
                    frozen_api.set()
                    if frozen and api.proc is not None:
                        thaw(api.proc.pid)
                        frozen = False
                    await asyncio.wait({run}, timeout=SILENT + 30)
                client.close()
        finally:
            if frozen and api.proc is not None:
                thaw(api.proc.pid)
            api.stop()
    told = said.getvalue()
    assert "READ_MODELS_NEWER" in told, told  # lost on the 503
    assert raised.value.exit_code == EXIT_UNREACHABLE
    assert "it sent no stream line in the time left" in str(raised.value), str(raised.value)
    assert "did not come back within 6 s" in str(raised.value)
