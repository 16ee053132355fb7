"""An event stream opened with a token ends when that token stops counting (revoked anywhere,
or past its expiry), rather than run on for as long as the client keeps it open."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.services.api.security.sessions import COOKIE_NAME
from tests.sse_client import SseEvent, iter_events
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, auth=True)


async def running_job(system: System) -> str:
    """A job that prints a line every 50 ms for far longer than the test."""
    async with system.client() as client:
        created = await client.post(
            "/api/jobs",
            json={"job_type": "emit", "parameters": {"lines": 100_000, "interval": "0.05"}},
        )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.mark.parametrize("via", ["bearer", "session"])
@pytest.mark.parametrize("ending", ["revoked", "expired"])
@pytest.mark.parametrize("stream", ["job", "updates"])
async def test_open_stream_ends_once_its_token_stops_counting(
    system: System, stream: str, ending: str, via: str
) -> None:
    """A viewer's open stream (a job's, or the update stream of every job) gets one
    ``unavailable`` event with code UNAUTHORIZED and ends once its token is revoked (from another
    process, through the token bucket) or expires, whether it authenticated by the token or by
    the browser session signed in with it; reconnecting then answers 401. (Before, the
    stream went on for as long as the client held it: the token was checked only as it opened.)
    """
    job_id = await running_job(system)
    expires_at = datetime.now(UTC) + timedelta(seconds=6) if ending == "expired" else None
    token = await system.create_token("watcher", "viewer", expires_at=expires_at)
    path = f"/api/jobs/{job_id}/stream" if stream == "job" else "/api/jobs/stream"
    received: list[SseEvent] = []
    if via == "bearer":
        client = system.client(token=token)
    else:
        cookie = await system.session_cookie(token)
        client = system.client(token=None, cookies={COOKIE_NAME: cookie})
    async with client:
        async with client.stream("GET", path) as response:
            assert response.status_code == 200, await response.aread()
            # Open: the handler has answered and the stream is under way.
            if ending == "revoked":
                await (await system.tokens()).revoke("watcher")
            async with asyncio.timeout(20):
                received.extend([event async for event in iter_events(response)])
        again = await client.get(path)
    last = received[-1]
    assert last.event == "unavailable", received[-3:]
    assert last.json["code"] == "UNAUTHORIZED"
    assert again.status_code == 401


async def test_listing_the_tokens_wakes_no_open_stream(system: System) -> None:
    """Every listing reads each token's record again, mostly unchanged: that must not wake the
    streams waiting on those tokens (before, each listing woke every open stream: 13-30 ms of
    loop time at 1,000 streams). A real change still ends the wait."""
    store = await system.tokens()
    await system.create_token("watcher", "viewer")
    record = await store.find("watcher")
    assert record is not None
    waiting = asyncio.create_task(store.until_unusable(record.id))
    await asyncio.sleep(0.1)
    event = store._changed[record.id]
    for _ in range(3):
        await store.all()
        await asyncio.sleep(0)
    assert store._changed.get(record.id) is event, "the listing woke the stream"
    assert not waiting.done()
    await store.revoke("watcher")
    async with asyncio.timeout(5):
        await waiting
