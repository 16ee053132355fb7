"""The purge's grace is what covers a download that has read the old description but not yet
created its consumer. Here the download's consumer creation is delayed (a slow step before
read_chunks subscribes, timed from the re-upload's answer) just shorter and just longer than the
grace: with artifact_read_idle_seconds at 2 s, ``replaced_grace`` keeps it at 6 s (one JetStream
request of nats-py's 5 s, and a margin), so it holds at small idle settings."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest

from jobrunner.common import artifactstore
from jobrunner.common.settings import Settings
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.system import System

IDLE = 2.0
GRACE = 6.0  # artifactstore.replaced_grace(IDLE): nats-py's 5 s request and a margin
NAME = "data.bin"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=EXTERNAL_TYPES, artifact_read_idle_seconds=IDLE
    )


@pytest.mark.parametrize(("delay", "whole"), [(GRACE - 1.5, True), (GRACE + 1.5, False)])
async def test_a_download_between_description_and_consumer(
    system: System, monkeypatch: pytest.MonkeyPatch, delay: float, whole: bool
) -> None:
    old, new = bytes(range(256)) * (4 * 1024), b"n" * 100_000
    described, replaced = asyncio.Event(), asyncio.Event()
    real = artifactstore.read_chunks

    async def slow_to_subscribe(*args: Any, **kwargs: Any) -> Any:
        described.set()  # the route has read the old description
        # The delay runs from the re-upload's answer: its purge (and grace) started before it,
        # so "just longer" is longer than the grace however long the upload itself took.
        await replaced.wait()
        await asyncio.sleep(delay)
        async for chunk in real(*args, **kwargs):
            yield chunk

    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        headers = {"Authorization": f"Bearer {job.token}"}
        url = f"{job.path}/artifacts/{NAME}"
        assert (await worker.put(url, content=old, headers=headers)).status_code == 201
        async with asyncio.timeout(30):
            while not (await client.get(f"/api/jobs/{job.id}/artifacts")).json()["items"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        monkeypatch.setattr(artifactstore, "read_chunks", slow_to_subscribe)

        async def download() -> bytes | str:
            try:
                got = await client.get(f"/api/jobs/{job.id}/artifacts/{NAME}")
            except httpx.RemoteProtocolError as exc:
                return f"cut ({exc!r})"
            return got.content

        reader = asyncio.create_task(download())
        await asyncio.wait_for(described.wait(), 30)
        assert (await worker.put(url, content=new, headers=headers)).status_code == 201
        replaced.set()
        body = await asyncio.wait_for(reader, 60)
        await job.report(worker, result={})
    if whole:
        assert body == old, body if isinstance(body, str) else len(body)
    else:
        assert body != old  # past the grace: purged under it, cut (never a mix)
        assert isinstance(body, str), "a body other than the old bytes"
