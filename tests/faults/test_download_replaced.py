"""A download while an external job's worker sends the same artifact name again: the bytes
served are whole old or whole new content, never a mix, and what the response says of them
(ETag: their SHA-256, Content-Length) is true of the bytes it carries; once the read model has
caught up, the listing's sha256 and size are those of the bytes served.

The read model's lag is forced by freezing the projector (SIGSTOP), the fault that stretches the
window between the new content's description in the bucket and its ``ArtifactStored`` row.
"""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import nats
import pytest

from jobrunner.common import artifactstore
from jobrunner.contracts.names import Names
from tests.external_support import ExternalJob
from tests.faults.cluster import FaultCluster
from tests.freeze import freeze, thaw

MIB = 1024 * 1024
NAME = "data.bin"


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _running_job(client: httpx.AsyncClient) -> ExternalJob:
    created = await client.post("/api/jobs", json={"job_type": "external"})
    assert created.status_code == 201, created.text
    job = ExternalJob(created.json())
    first = await job.report_when_held(client, report_id="r0")
    assert first.status_code == 200, first.text
    return job


async def _upload(client: httpx.AsyncClient, job: ExternalJob, data: bytes) -> None:
    response = await client.put(
        f"/api/external/jobs/{job.id}/artifacts/{NAME}",
        content=data,
        headers={"Authorization": f"Bearer {job.token}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == _sha(data)


async def _listed(client: httpx.AsyncClient, job: ExternalJob, data: bytes) -> dict[str, object]:
    """The artifact's listing once it shows ``data``."""
    async with asyncio.timeout(30):
        while True:
            items = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()["items"]
            if items and items[0]["sha256"] == _sha(data):
                return dict(items[0])
            await asyncio.sleep(0.05)


async def test_a_download_says_the_truth_of_the_bytes_it_serves_while_the_listing_lags(
    cluster: FaultCluster,
) -> None:
    """The name sent again while the projector is frozen: the new bytes are served (the old
    description is gone), so their ETag and Content-Length must be the new ones; a client holding
    the old ETag must not be told 304 Not Modified."""
    old, new = b"o" * MIB, b"n" * (2 * MIB)
    async with cluster.client() as client:
        job = await _running_job(client)
        await _upload(client, job, old)
        item = await _listed(client, job, old)
        problems: list[str] = []
        proc = cluster.services["projector"].proc
        assert proc is not None
        freeze(proc.pid)
        try:
            await _upload(client, job, new)
            served = await client.get(str(item["url"]))
            assert served.status_code == 200, served.text
            body = served.content
            if body not in (old, new):
                problems.append("the body is neither the old nor the new content")
            if served.headers["etag"] != f'"{_sha(body)}"':
                problems.append(
                    f"ETag {served.headers['etag']} is not the served bytes' SHA-256 "
                    f"({'new' if body == new else 'old'} content, {len(body)} bytes)"
                )
            cached = await client.get(str(item["url"]), headers={"If-None-Match": f'"{_sha(old)}"'})
            if body == new and cached.status_code == 304:
                problems.append("304 Not Modified for the old content's ETag; the content changed")
        finally:
            thaw(proc.pid)
        listed = await _listed(client, job, new)
        served = await client.get(str(item["url"]))
        if (listed["size"], listed["sha256"]) != (len(served.content), _sha(served.content)):
            problems.append("after the read model caught up, the listing differs from the bytes")
        await job.report(client, report_id="end", result={})
    assert not problems, "\n".join(problems)


async def test_a_download_in_flight_when_the_name_is_sent_again_is_whole(
    cluster: FaultCluster,
) -> None:
    """The old content's chunks are purged only once no download reads them
    (``artifactstore.purge_when_unread``): a download that began on them ends whole."""
    old, new = bytes(range(256)) * (64 * 1024), b"n" * MIB  # 16 MiB, 1 MiB
    async with cluster.client() as client:
        job = await _running_job(client)
        await _upload(client, job, old)
        item = await _listed(client, job, old)
        body = bytearray()
        first_chunk = asyncio.Event()
        replaced = asyncio.Event()

        async def download() -> bool:
            """True when the body was cut."""
            try:
                async with client.stream("GET", str(item["url"]), timeout=15) as response:
                    async for chunk in response.aiter_raw():
                        body.extend(chunk)
                        if not first_chunk.is_set():
                            first_chunk.set()
                            await replaced.wait()
            except (httpx.RemoteProtocolError, httpx.ReadTimeout):
                return True  # cut, or silent longer than the idle limit and then some
            finally:
                first_chunk.set()
            return False

        reader = asyncio.create_task(download())
        await first_chunk.wait()
        await _upload(client, job, new)
        await asyncio.sleep(1.0)  # the old content's purge runs in the background
        replaced.set()
        cut = await asyncio.wait_for(reader, 60)
        await job.report(client, report_id="end", result={})
    assert not cut, f"the download was cut after {len(body)} of {len(old)} bytes"
    assert bytes(body) in (old, new), "the body is a mix"


async def test_a_download_whose_chunks_are_purged_is_cut_within_the_idle_limit(
    cluster: FaultCluster,
) -> None:
    """A download whose remaining chunks are gone must end (cut) within
    ``artifact_read_idle_seconds`` (10 s), not hang: the client's read timeout here is 15 s.
    Chunks purged under a download no longer come from the name sent again (that purge waits for
    the readers), so they are purged here directly, as the bucket's max age or an operator
    would."""
    old = bytes(range(256)) * (64 * 1024)  # 16 MiB
    names = Names(cluster.settings.prefix)
    async with cluster.client() as client:
        job = await _running_job(client)
        await _upload(client, job, old)
        item = await _listed(client, job, old)
        body = bytearray()
        first_chunk = asyncio.Event()
        replaced = asyncio.Event()

        async def download() -> str:
            try:
                async with client.stream("GET", str(item["url"]), timeout=15) as response:
                    async for chunk in response.aiter_raw():
                        body.extend(chunk)
                        if not first_chunk.is_set():
                            first_chunk.set()
                            await replaced.wait()
            except httpx.RemoteProtocolError:
                return "cut"
            except httpx.ReadTimeout:
                return "silent for 15 s"
            finally:
                first_chunk.set()
            return "ended normally"

        reader = asyncio.create_task(download())
        await first_chunk.wait()
        nc = await nats.connect(cluster.nats.url)
        try:
            js = nc.jetstream()
            info = await artifactstore.object_info(js, names, names.artifact_object(job.id, NAME))
            await js.purge_stream(
                artifactstore.stream_name(names),
                subject=f"$O.{names.artifacts_bucket}.C.{info.nuid}",
            )
        finally:
            await nc.close()
        replaced.set()
        how = await asyncio.wait_for(reader, 60)
        await job.report(client, report_id="end", result={})
    assert how == "cut", f"the download {how} after {len(body)} bytes"
