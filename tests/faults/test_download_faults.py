"""Downloads under NATS faults not covered by test_artifact_faults.py: nats-server SIGKILLed
mid-download and started again on the same port and store. (Frozen 8 s and 12 s, just either
side of ``artifact_read_idle_seconds``, held too, but took 10-13 s each and repeat
test_artifact_faults.py's 3 s/13 s: not kept; bench/RESULTS.md, session 20, s20audit3.)

The promise: a client can always tell a cut download. The response has a Content-Length, so a
cut body is one shorter than it (httpx raises ``RemoteProtocolError``); a body that ends normally
is the whole file, byte for byte. And the API serves on: the same file downloads whole after.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.faults.cluster import FaultCluster, is_terminal
from tests.faults.invariants import outcome

MIB = 1024 * 1024
READ_IDLE = 10.0  # Settings.artifact_read_idle_seconds, the cluster's default


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


async def _artifact(cluster: FaultCluster, mib: int) -> dict[str, object]:
    async with cluster.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "artifacts", "parameters": {"mib": mib}}
        )
        assert response.status_code == 201, response.text
        job_id = str(response.json()["id"])
        row = await cluster.wait_job(job_id, is_terminal, 90)
        assert row is not None
        assert row.status == "completed", outcome(row)
        items = (await client.get(f"/api/jobs/{job_id}/artifacts")).json()["items"]
    assert len(items) == 1, items
    return dict(items[0])


async def _download_under(
    cluster: FaultCluster, item: dict[str, object], fault: Callable[[], Awaitable[None]]
) -> tuple[bool, int, str, str | None]:
    """Download ``item``, holding after the first chunk until ``fault`` has begun (so most of
    the file is still in the store), reading on throughout the fault. Returns (cut, bytes read,
    sha256 of them, Content-Length)."""
    digest = hashlib.sha256()
    read = 0
    length: str | None = None
    first_chunk = asyncio.Event()
    struck = asyncio.Event()

    async def download() -> bool:
        nonlocal read, length
        try:
            async with (
                cluster.client() as client,
                client.stream("GET", str(item["url"])) as response,
            ):
                assert response.status_code == 200, response.status_code
                length = response.headers.get("content-length")
                async for chunk in response.aiter_raw():
                    digest.update(chunk)
                    read += len(chunk)
                    if not first_chunk.is_set():
                        first_chunk.set()
                        await struck.wait()
        except httpx.RemoteProtocolError:
            return True
        finally:
            first_chunk.set()
        return False

    reader = asyncio.create_task(download())
    await first_chunk.wait()
    fault_task = asyncio.create_task(fault())
    await asyncio.sleep(0.2)  # the fault has struck (kill or SIGSTOP are immediate)
    struck.set()
    await fault_task
    cut = await asyncio.wait_for(reader, 90)
    return cut, read, digest.hexdigest(), length


async def _serves_whole_again(cluster: FaultCluster, item: dict[str, object]) -> list[str]:
    """Within 60 s of the fault, the same file downloads whole."""
    last = ""
    async with asyncio.timeout(60):
        while True:
            try:
                async with cluster.client() as client:
                    response = await client.get(str(item["url"]))
                if response.status_code == 200:
                    if hashlib.sha256(response.content).hexdigest() == item["sha256"]:
                        return []
                    return ["a download after the fault ended 200 with other bytes"]
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            await asyncio.sleep(0.5)
    return [f"the API does not serve the file again: {last}"]


def _problems(
    item: dict[str, object], cut: bool, read: int, sha: str, length: str | None
) -> list[str]:
    problems = []
    if length != str(item["size"]):
        problems.append(f"Content-Length {length}, the artifact has {item['size']} bytes")
    if not cut and (read != item["size"] or sha != item["sha256"]):
        problems.append(f"the body ended normally after {read} of {item['size']} bytes or differs")
    if cut and read >= int(str(item["size"])):
        problems.append("a cut body had every byte")
    return problems


@pytest.mark.parametrize("down", [0.0, 3.0], ids=["restarted-at-once", "down-3s"])
async def test_nats_killed_mid_download_is_cut_or_whole_and_the_api_recovers(
    cluster: FaultCluster, down: float
) -> None:
    item = await _artifact(cluster, 64)
    cut, read, sha, length = await _download_under(
        cluster, item, lambda: cluster.restart_nats(down)
    )
    problems = _problems(item, cut, read, sha, length)
    problems += await _serves_whole_again(cluster, item)
    assert not problems, "\n".join(problems)
