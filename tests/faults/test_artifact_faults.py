"""Artifacts under faults: a runner SIGKILLed mid-upload, NATS paused mid-upload (below and
above the lease TTL, 3 s) and mid-download (below and above artifact_read_idle_seconds, 10 s).

Below the lease: 1 s. The keeper gives the lease up TTL - TTL/4 = 2.25 s after the last
confirmed renewal, which may be a renewal interval (TTL/6, 0.5 s) old when the pause starts: the
lease survives 1.75 s (``lease.survivable_outage``), and a 1 s pause leaves 0.75 s for the runner
to read the answer to its first renewal sent into it. (With renewals every TTL/3, a 1.5 s pause
ended after the deadline in about a quarter of runs, upload or not.)

The invariants: an artifact is listed only once it is whole (its description is written last,
its ArtifactStored after that); a job whose runner died ends RUNNER_LOST; a runner that lost its
lease stores nothing more; a download NATS cannot feed is cut off (an incomplete body the client
notices), never left hanging, and one NATS can feed is byte-identical.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import httpx
import nats
import pytest
from nats.js import JetStreamContext

from jobrunner.common import artifactstore
from jobrunner.contracts.names import Names
from tests.faults import figures
from tests.faults.cluster import SHORT_TTL, FaultCluster, JobRow, is_terminal
from tests.faults.invariants import outcome

MIB = 1024 * 1024
UPLOAD_MIB = 300  # several seconds of upload on this machine: room to hurt it mid-way
READ_IDLE = 10.0  # Settings.artifact_read_idle_seconds, the cluster's default


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


@pytest.fixture
async def js(cluster: FaultCluster) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(cluster.nats.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def _stored_bytes(js: JetStreamContext, names: Names) -> int:
    return int((await js.stream_info(artifactstore.stream_name(names))).state.bytes or 0)


async def _start_upload(cluster: FaultCluster, js: JetStreamContext, mib: int) -> str:
    """Start a job writing one ``mib`` MiB file; return once its upload is under way."""
    names = Names(cluster.settings.prefix)
    before = await _stored_bytes(js, names)
    async with cluster.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "artifacts", "parameters": {"mib": mib}}
        )
    assert response.status_code == 201, response.text
    job_id = str(response.json()["id"])
    async with asyncio.timeout(60):
        while await _stored_bytes(js, names) < before + 16 * MIB:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # the runner writes the chunks: poll the bucket
    return job_id


async def _artifact_rows(cluster: FaultCluster, job_id: str) -> list[str]:
    rows = await cluster.query("SELECT name FROM readmodel.artifacts WHERE job_id = $1", job_id)
    return [r["name"] for r in rows]


async def _object_listed(js: JetStreamContext, cluster: FaultCluster, job_id: str) -> bool:
    names = Names(cluster.settings.prefix)
    try:
        await artifactstore.object_info(js, names, names.artifact_object(job_id, "big.bin"))
    except artifactstore.ObjectMissing:
        return False
    return True


def _record(fault: str, row: JobRow | None, problems: list[str]) -> None:
    figures.record(
        figures.Figure(
            fault=fault,
            outcome=outcome(row),
            printed=1,
            stored=0,
            recovery_s=None,
            terminal_s=None,
            holds=not problems,
            note="; ".join(problems),
        )
    )


async def test_runner_killed_mid_upload_ends_runner_lost_without_half_artifact(
    cluster: FaultCluster, js: JetStreamContext
) -> None:
    """SIGKILL of the runner while it uploads: the job ends RUNNER_LOST and lists no artifact."""
    job_id = await _start_upload(cluster, js, UPLOAD_MIB)
    row = await cluster.job(job_id)
    assert row is not None
    assert row.runner_id
    victim = row.runner_id
    problems: list[str] = []
    try:
        cluster.services[victim].kill()
        row = await cluster.wait_job(job_id, is_terminal, 60)
        if row is None or (row.status, row.error_code) != ("failed", "RUNNER_LOST"):
            problems.append(f"job should end failed RUNNER_LOST, ended {outcome(row)}")
        if names := await _artifact_rows(cluster, job_id):
            problems.append(f"half-uploaded artifacts listed: {names}")
        if await _object_listed(js, cluster, job_id):
            problems.append("the half-uploaded object has a description in the bucket")
    finally:
        _record("runner SIGKILLed mid-upload", row, problems)
        await cluster.start_service(victim)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("seconds", "completes"),
    [
        pytest.param(1.0, True, id="1s-below-ttl-less-a-renewal"),
        pytest.param(4.0, False, id="4s-above-ttl"),
    ],
)
async def test_nats_pause_mid_upload(
    cluster: FaultCluster, js: JetStreamContext, seconds: float, completes: bool
) -> None:
    """NATS frozen mid-upload: below the TTL the artifact is stored whole; above it the job ends
    LEASE_LOST (or RUNNER_LOST) and no artifact is listed."""
    job_id = await _start_upload(cluster, js, UPLOAD_MIB)
    cluster.pause_nats()
    try:
        await asyncio.sleep(seconds)  # the fault itself lasts this long
    finally:
        cluster.resume_nats()
    row = await cluster.wait_job(job_id, is_terminal, 90)
    problems: list[str] = []
    listed = await _artifact_rows(cluster, job_id)
    if completes:
        if row is None or row.status != "completed":
            problems.append(f"job should complete, ended {outcome(row)}")
        if listed != ["big.bin"]:
            problems.append(f"artifact should be listed, listed: {listed}")
        else:
            async with cluster.client() as client:
                item = (await client.get(f"/api/jobs/{job_id}/artifacts")).json()["items"][0]
                digest = hashlib.sha256()
                async with client.stream("GET", item["url"]) as response:
                    async for chunk in response.aiter_bytes():
                        digest.update(chunk)
            if digest.hexdigest() != item["sha256"] or item["size"] != UPLOAD_MIB * MIB:
                problems.append("the stored artifact differs from what the tool wrote")
    else:
        if row is None or row.error_code not in ("LEASE_LOST", "RUNNER_LOST"):
            problems.append(f"job should end LEASE_LOST or RUNNER_LOST, ended {outcome(row)}")
        if listed:
            problems.append(f"artifacts listed after the lease was lost: {listed}")
    _record(f"NATS paused {seconds:g} s mid-upload (TTL {SHORT_TTL:g} s)", row, problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("seconds", "whole"),
    [
        pytest.param(3.0, True, id="3s-below-read-idle"),
        pytest.param(READ_IDLE + 3.0, False, id="13s-above-read-idle"),
    ],
)
async def test_nats_pause_mid_download(
    cluster: FaultCluster, js: JetStreamContext, seconds: float, whole: bool
) -> None:
    """NATS frozen mid-download: below the read idle limit the download completes byte for
    byte; above it the body is cut off (the client sees it incomplete) and the API serves on.

    The client holds its reading after the first chunk until NATS is paused, so the pause always
    begins with most of the 64 MiB still in the store: a client reading on at full speed could
    take the whole body before the pause began (two CI runs under load ended normally that way).
    Once NATS is paused the client reads on throughout, as a real one would: a client that stopped
    reading would let the socket buffers fill, and the API would wait on its write instead of on
    NATS and never meet the pause."""
    job_id = await _start_upload(cluster, js, 64)
    row = await cluster.wait_job(job_id, is_terminal, 90)
    assert row is not None
    assert row.status == "completed", outcome(row)
    problems: list[str] = []
    async with cluster.client() as client:
        item = (await client.get(f"/api/jobs/{job_id}/artifacts")).json()["items"][0]
        digest = hashlib.sha256()
        first_chunk = asyncio.Event()
        paused = asyncio.Event()

        async def download() -> bool:
            """Read the whole body; True when the API cut it off."""
            try:
                async with client.stream("GET", item["url"]) as response:
                    async for chunk in response.aiter_bytes():
                        digest.update(chunk)
                        if not first_chunk.is_set():
                            first_chunk.set()
                            await paused.wait()
            except httpx.RemoteProtocolError:
                return True
            finally:
                first_chunk.set()
            return False

        reader = asyncio.create_task(download())
        await first_chunk.wait()
        cluster.pause_nats()
        paused.set()
        try:
            await asyncio.sleep(seconds)  # the fault itself lasts this long
        finally:
            cluster.resume_nats()
        cut = await asyncio.wait_for(reader, 60)
        if whole and (cut or digest.hexdigest() != item["sha256"]):
            problems.append("the download should be whole and identical")
        if not whole and not cut:
            problems.append("the download should be cut off, it ended normally")
        after = await client.get(f"/api/jobs/{job_id}/artifacts")
        if after.status_code != 200:
            problems.append(f"the API answers {after.status_code} after the pause")
    _record(f"NATS paused {seconds:g} s mid-download (idle {READ_IDLE:g} s)", row, problems)
    assert not problems, "\n".join(problems)
