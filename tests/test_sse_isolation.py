"""One viewer's request never changes what another viewer of the same job receives."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

pytestmark = pytest.mark.timeout(120)

FUTURE_ID = "999999999"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, sse_keepalive_seconds=0.5)


async def start(system: System, **parameters: object) -> str:
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": parameters}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_last_event_id_beyond_the_stream_is_refused(system: System) -> None:
    """Resuming from an id no event has yet answers 400 LAST_EVENT_ID_AHEAD with a reason."""
    job_id = await start(system, lines=5)
    async with system.client() as client:
        response = await client.get(
            f"/jobs/stream/{job_id}", headers={"Last-Event-ID": f"{FUTURE_ID}:3"}
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "LAST_EVENT_ID_AHEAD"
    assert "beyond the last stored event" in error["message"]


async def test_a_viewer_from_the_future_does_not_freeze_the_others(system: System) -> None:
    """A first viewer with a far-ahead Last-Event-ID leaves the next viewer every line and done."""
    job_id = await start(system, lines=40, interval="0.02")
    path = f"/jobs/stream/{job_id}"
    async with (
        system.client() as client,
        client.stream("GET", path, headers={"Last-Event-ID": FUTURE_ID}) as hostile,
    ):
        # Held open (unread) while the honest viewer connects, as a hostile page would.
        async with asyncio.timeout(60):
            honest = await read_stream(client, path)
        await hostile.aclose()
    texts = [e.json["text"] for e in honest.events if e.event == "message"]
    assert texts == [f"INFO line {i} [{i}/40]" for i in range(1, 41)]
    assert honest.events[-1].event == "done"
