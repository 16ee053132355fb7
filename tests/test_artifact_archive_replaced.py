"""A ZIP archive in flight when a later member's name is sent again is whole, with the member's
old bytes: every member's content is marked as read (a guard consumer, ``ReadGuards``) when its
description is read, before the archive's first byte, so the replaced content's purge waits for
the archive even while an earlier member still streams. (Found by review: each member's consumer
was made only when the archive reached it, so the old chunks were purged after the grace.)"""

from __future__ import annotations

import asyncio
import io
import zipfile
from typing import Any

import httpx
import msgspec
import pytest

from jobrunner.common import artifactstore
from jobrunner.common.settings import Settings
from tests.external_support import EXTERNAL_TYPES, ExternalJob, start_external, worker_client
from tests.system import System

IDLE = 2.0
GRACE = artifactstore.replaced_grace(IDLE)  # 6 s
MIB = 1024 * 1024


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=EXTERNAL_TYPES, artifact_read_idle_seconds=IDLE
    )


async def _put(worker: Any, job: ExternalJob, name: str, data: bytes) -> None:
    response = await worker.put(
        f"{job.path}/artifacts/{name}",
        content=data,
        headers={"Authorization": f"Bearer {job.token}"},
    )
    assert response.status_code == 201, response.text


async def _archive_while_b_is_sent_again(
    system: System, hold: float, bytes_per_second: float | None
) -> None:
    """a.bin (16 MiB) then b.bin; b.bin sent again once the archive's first bytes came, then
    the client holds ``hold`` seconds and reads at ``bytes_per_second`` (None: at once)."""
    big, old_b, new_b = bytes(range(256)) * (64 * 1024), b"o" * 300_000, b"n" * 100_000
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        await _put(worker, job, "a.bin", big)  # first in the archive
        await _put(worker, job, "b.bin", old_b)
        async with asyncio.timeout(30):
            while len((await client.get(f"/api/jobs/{job.id}/artifacts")).json()["items"]) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        body = bytearray()
        how = "ended"
        try:
            async with (
                system.client() as reader,
                reader.stream(
                    "GET", f"/api/jobs/{job.id}/download-archive", timeout=30
                ) as response,
            ):
                assert response.status_code == 200
                async for chunk in response.aiter_raw():
                    if not body:
                        await _put(worker, job, "b.bin", new_b)  # b's old description was read
                        await asyncio.sleep(hold)  # the client holds; a.bin still streams
                    elif bytes_per_second:
                        await asyncio.sleep(len(chunk) / bytes_per_second)
                    body.extend(chunk)
        except (httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
            how = f"cut after {len(body)} bytes ({type(exc).__name__})"
        await job.report(worker, result={})
    assert how == "ended", how
    with zipfile.ZipFile(io.BytesIO(bytes(body))) as archive:
        assert archive.read("a.bin") == big
        assert archive.read("b.bin") == old_b


async def test_an_archive_in_flight_when_a_later_member_is_sent_again_is_whole(
    system: System,
) -> None:
    """The client holds past the grace while a.bin streams: b.bin's old chunks stay."""
    await _archive_while_b_is_sent_again(system, hold=GRACE + 3.0, bytes_per_second=None)


async def test_a_member_waits_longer_than_its_guards_inactive_threshold(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a.bin read slowly (1 MiB/s: 16 s, the server ahead by what the sockets buffer) with
    consumers' inactive threshold at 3 s: the archive asks its guard for a chunk every third of
    it, so the guard outlasts the threshold, and b.bin's old chunks (purged at the grace, 6 s,
    were nobody reading them) are there when the archive gets to them."""
    monkeypatch.setattr(artifactstore, "_inactive_threshold", lambda idle_seconds: 3.0)
    await _archive_while_b_is_sent_again(system, hold=0.0, bytes_per_second=MIB)
