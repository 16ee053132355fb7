"""An artifact name sent again while another API process serves a download of it, and the API
that took the upload killed before the replaced content's (delayed) purge.

Two API processes on one cluster: the download goes through the second, the uploads through the
first. The replaced content's chunks may go only once no download reads them, whichever process
serves it (``artifactstore.purge_when_unread`` asks the server for the consumers reading them);
a purge that died with its process is done by the next upload of the name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator

import httpx
import msgspec
import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from jobrunner.common import artifactpurges, artifactstore
from jobrunner.contracts.names import Names
from jobrunner.embedded.serverprocess import free_port
from tests.external_support import ExternalJob
from tests.faults.cluster import FaultCluster, running_cluster
from tests.faults.services import Service

MIB = 1024 * 1024
NAME = "data.bin"
READ_IDLE = 10.0  # Settings.artifact_read_idle_seconds, the cluster's default
# The replaced content's purge's grace with that setting (the longer of it and the time a download
# takes from its description to its consumer): what the waits below are timed from.
GRACE = artifactstore.replaced_grace(READ_IDLE)


# The module's lease: the external job of each test must stay held across its faults and waits
# (a grace or two, API restarts, a NATS restart), all on a loaded machine. The shared cluster's
# 3 s lease survives an outage of 1.75 s (``lease.survivable_outage``): a restart of its
# nats-server, which recovers every stream the suite made, took longer in session 26's stop CI,
# and a runner starved that long under load gives the slot up just the same (an external job on
# a 3 s lease at load 11 ended so in session 20: bench/RESULTS.md, s20auditart). Either way the
# job ends LEASE_LOST, as it must, and the test's next upload is refused 409 JOB_FINISHED. At
# 20 s the lease survives 11.7 s. (The pauses below lose it or not: nothing here depends on it.)
LEASE_TTL = 20.0
# artifact_upload_window_seconds of the API whose upload is killed (80 s by default), and how
# long before its end the attempt is looked at: still recorded, unconfirmed.
SHORT_WINDOW = 4.0
JUST = 0.5


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[FaultCluster]:
    async with running_cluster(lease_ttl=LEASE_TTL) as running:
        assert running.settings.artifact_read_idle_seconds == READ_IDLE
        yield running


@pytest.fixture
async def js(cluster: FaultCluster) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(cluster.nats.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest.fixture
async def second_api(cluster: FaultCluster) -> AsyncIterator[str]:
    """Another API process on the same servers; its base URL."""
    cluster.add_service("api-2", "api", port=free_port())
    try:
        await cluster.start_service("api-2")
        yield cluster.api_addresses["api-2"].url
    finally:
        cluster.remove_service("api-2")


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


async def _nuid(js: JetStreamContext, names: Names, job: ExternalJob) -> str:
    info = await artifactstore.object_info(js, names, names.artifact_object(job.id, NAME))
    return info.nuid


async def _has_chunks(js: JetStreamContext, names: Names, nuid: str) -> bool:
    try:
        await js.get_last_msg(
            artifactstore.stream_name(names), f"$O.{names.artifacts_bucket}.C.{nuid}"
        )
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _any_chunks(js: JetStreamContext, names: Names, *nuids: str) -> bool:
    return any([await _has_chunks(js, names, nuid) for nuid in nuids])


def _log_lines(service: Service, text: str, nuid: str) -> int:
    """Lines of the service's log with ``text`` about ``nuid``: the cluster is shared, and
    another test's purges log the same words."""
    try:
        lines = service.log_file.read_bytes().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if text.encode() in line and nuid.encode() in line)


async def _held_download(
    url: str, path: str, hold: asyncio.Event, started: asyncio.Event
) -> bytes | str:
    """The body, read after a pause once its first chunk came (or how it was cut)."""
    body = bytearray()
    try:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            client.stream("GET", path) as response,
        ):
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                body.extend(chunk)
                if not started.is_set():
                    started.set()
                    await hold.wait()
    except (httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
        return f"cut after {len(body)} bytes ({type(exc).__name__})"
    finally:
        started.set()
    return bytes(body)


async def test_a_download_held_past_the_grace_on_another_api_is_whole(
    cluster: FaultCluster, second_api: str, js: JetStreamContext
) -> None:
    """The download (second API) holds its client past the purge's grace (10 s): the first
    API's purge finds the download's consumer and waits for it to end (and then purges: waited
    for, so no purge of this test's is left waiting for the next test on the cluster)."""
    names = Names(cluster.settings.prefix)
    old, new = bytes(range(256)) * (64 * 1024), b"n" * MIB  # 16 MiB, 1 MiB
    async with cluster.client() as client:
        job = await _running_job(client)
        await _upload(client, job, old)
        old_nuid = await _nuid(js, names, job)
        path = f"/api/jobs/{job.id}/artifacts/{NAME}"
        hold, started = asyncio.Event(), asyncio.Event()
        reader = asyncio.create_task(_held_download(second_api, path, hold, started))
        await started.wait()
        await _upload(client, job, new)
        await asyncio.sleep(GRACE + 3.0)  # past the grace: the purge has looked for readers
        hold.set()
        body = await asyncio.wait_for(reader, 60)
        await job.report(client, report_id="end", result={})
    assert isinstance(body, bytes), body
    assert body == old
    async with asyncio.timeout(GRACE * 4):
        while await _any_chunks(js, names, old_nuid):  # noqa: ASYNC110
            await asyncio.sleep(0.2)  # the purge runs in the API: poll the bucket


async def test_the_api_killed_before_its_purge_leaves_it_to_the_next_upload(
    cluster: FaultCluster, second_api: str, js: JetStreamContext
) -> None:
    """SIGKILL of the API that took the new content, within the grace: a download of the old
    content (second API) ends whole; the old chunks stay (nobody purges them) until the name is
    sent again, whose upload purges both earlier contents (the description named the old one)."""
    names = Names(cluster.settings.prefix)
    first, second, third = bytes(range(256)) * (64 * 1024), b"2" * MIB, b"3" * MIB
    api = cluster.services["api"]
    try:
        async with cluster.client() as client:
            job = await _running_job(client)
            await _upload(client, job, first)
            first_nuid = await _nuid(js, names, job)
            path = f"/api/jobs/{job.id}/artifacts/{NAME}"
            hold, started = asyncio.Event(), asyncio.Event()
            reader = asyncio.create_task(_held_download(second_api, path, hold, started))
            await started.wait()
            await _upload(client, job, second)
            api.kill()  # within the grace: its purge of the first content dies with it
        second_nuid = await _nuid(js, names, job)
        await asyncio.sleep(1.0)
        hold.set()
        body = await asyncio.wait_for(reader, 60)
        assert isinstance(body, bytes), body
        assert body == first
        assert await _has_chunks(js, names, first_nuid), "nobody was left to purge it"
    finally:
        if not api.alive:  # else an early failure's AlreadyRunning would hide it
            await cluster.start_service("api")
    async with cluster.client() as client:
        await _upload(client, job, third)
        async with asyncio.timeout(GRACE * 4):
            while await _any_chunks(js, names, first_nuid, second_nuid):  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # the purge runs in another process: poll the bucket
        served = await client.get(path)
        await job.report(client, report_id="end", result={})
    assert served.content == third


@pytest.mark.parametrize("pause", [4.0, 7.0], ids=["4s-below-request", "7s-above-request"])
async def test_nats_paused_where_the_purge_lists_readers(
    cluster: FaultCluster, js: JetStreamContext, pause: float
) -> None:
    """NATS paused from 2 s before the purge's grace ends (10 s after the upload) until 4 s or
    7 s after the purge logs that it looks for readers, so its request for the consumers
    (nats-py's 5 s) waits in the pause: 4 s, answered (no "not listed"); 7 s, timed out, asked
    again after another grace. Either way a download held across it ends whole and the old
    chunks go afterwards."""
    names = Names(cluster.settings.prefix)
    old, new = bytes(range(256)) * (64 * 1024), b"n" * MIB
    api = cluster.services["api"]
    async with cluster.client() as client:
        job = await _running_job(client)
        await _upload(client, job, old)
        old_nuid = await _nuid(js, names, job)
        path = f"/api/jobs/{job.id}/artifacts/{NAME}"
        hold, started = asyncio.Event(), asyncio.Event()
        reader = asyncio.create_task(_held_download(cluster.base_url, path, hold, started))
        await started.wait()
        await _upload(client, job, new)
        await asyncio.sleep(GRACE - 2.0)
        looked = _log_lines(api, "artifact readers looked for", old_nuid)
        assert looked == 0, "looked before the pause"
        cluster.pause_nats()
        try:
            # The pause is timed from the purge's request (the API logs it just before; the
            # API runs while NATS is paused), not from the test's own clock.
            async with asyncio.timeout(10):
                while not _log_lines(api, "artifact readers looked for", old_nuid):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the API's log file
            await asyncio.sleep(pause)
        finally:
            cluster.resume_nats()
        hold.set()
        body = await asyncio.wait_for(reader, 60)
        async with asyncio.timeout(GRACE * 4):
            while await _any_chunks(js, names, old_nuid):  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # the purge runs in the API: poll the bucket
        served = await client.get(path)
        await job.report(client, report_id="end", result={})
    assert isinstance(body, bytes), body
    assert body == old
    assert served.content == new
    unlisted = _log_lines(api, "artifact readers not listed", old_nuid)
    assert unlisted == (1 if pause > 5 else 0)


@pytest.mark.parametrize("nats_restarted", [False, True], ids=["api-killed", "nats-restarted"])
async def test_two_api_deaths_in_a_row_leave_no_replaced_content(
    cluster: FaultCluster, js: JetStreamContext, nats_restarted: bool
) -> None:
    """The API SIGKILLed within the grace after each of two re-uploads, and the name never sent
    again: both replaced contents go anyway (their pending purges are records in JetStream, which
    the restarted API's sweep takes up), and the content served is whole. On main the first
    content stayed for ever (the chain named only the second) and the second until the next
    upload of the name. Also with NATS killed and restarted while the API is down (the records
    are in file storage)."""
    names = Names(cluster.settings.prefix)
    first, second, third = b"1" * MIB, b"2" * MIB, b"3" * MIB
    api = cluster.services["api"]
    replaced: list[str] = []
    try:
        async with cluster.client() as client:
            job = await _running_job(client)
            await _upload(client, job, first)
        for content in (second, third):
            replaced.append(await _nuid(js, names, job))
            async with cluster.client() as client:
                await _upload(client, job, content)
            api.kill()  # within the grace: its own purge of the replaced content dies with it
            assert await _has_chunks(js, names, replaced[-1])
            if nats_restarted:
                await cluster.restart_nats()
            await cluster.start_service("api")
        async with asyncio.timeout(GRACE * 6):
            while await _any_chunks(js, names, *replaced):  # noqa: ASYNC110
                await asyncio.sleep(0.5)  # the sweep runs in the API: poll the bucket
        async with cluster.client() as client:
            served = await client.get(f"/api/jobs/{job.id}/artifacts/{NAME}")
            await job.report(client, report_id="end", result={})
    finally:
        if not api.alive:
            await cluster.start_service("api")
    assert served.content == third


async def _pending_purges(js: JetStreamContext, names: Names) -> dict[str, str]:
    """The pending-purge records: nuid -> the object name they are about."""
    kv = await js.key_value(names.artifact_purges_bucket)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    found = {}
    for key in keys:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await kv.get(key)
            found[key] = msgspec.json.decode(entry.value or b"{}")["object_name"]
    return found


async def _attempt_left(js: JetStreamContext, names: Names, nuid: str, object_name: str) -> bool:
    """The attempt's chunks, or a pending purge about the object, are still there."""
    pending = await _pending_purges(js, names)
    return await _has_chunks(js, names, nuid) or object_name in pending.values()


@pytest.fixture
async def short_window_api(cluster: FaultCluster) -> AsyncIterator[str]:
    """Another API process whose uploads' records are due ``SHORT_WINDOW`` on; its name."""
    cluster.add_service(
        "api-short", "api", port=free_port(), artifact_upload_window_seconds=SHORT_WINDOW
    )
    try:
        await cluster.start_service("api-short")
        yield "api-short"
    finally:
        cluster.remove_service("api-short")


async def _record_of(
    js: JetStreamContext, names: Names, nuid: str
) -> artifactpurges.PendingPurge | None:
    """The pending-purge record of ``nuid``, or None."""
    kv = await js.key_value(names.artifact_purges_bucket)
    try:
        entry = await kv.get(nuid)
    except nats.js.errors.KeyNotFoundError:
        return None
    return msgspec.json.decode(entry.value or b"", type=artifactpurges.PendingPurge)


async def test_an_upload_killed_mid_chunks_leaves_no_chunks(
    cluster: FaultCluster, js: JetStreamContext, short_window_api: str
) -> None:
    """The API SIGKILLed after the re-upload's attempt was recorded and some of its chunks
    stored, before its description: the name still serves the first content (whole, never
    purged), and the attempt's chunks go once the restarted API's sweep finds the name not
    serving them after the upload window (``artifact_upload_window_seconds``, 4 s here, 80 s by
    default) from the record's last renewal: just before the window's end the attempt is still
    recorded unconfirmed, its chunks kept; after it, and two graces, they are gone. On main
    they stayed until the bucket's max age. The cluster's own API is stopped meanwhile, so the
    restarted API's sweeps are the ones that purge. (About 25 s: the window, then the sweep's
    confirmation due a grace on and its purge taken a grace past that, two graces of 10 s.)"""
    names = Names(cluster.settings.prefix)
    first, big = b"1" * MIB, bytes(range(256)) * (512 * 1024)  # 1 MiB, 128 MiB
    api = cluster.services[short_window_api]
    url = cluster.api_addresses[short_window_api].url
    other_api = cluster.services["api"]
    other_api.stop()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            job = await _running_job(client)
            await _upload(client, job, first)
        object_name = names.artifact_object(job.id, NAME)
        first_nuid = await _nuid(js, names, job)

        async def upload_big() -> None:
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    await client.put(
                        f"/api/external/jobs/{job.id}/artifacts/{NAME}",
                        content=big,
                        headers={"Authorization": f"Bearer {job.token}"},
                    )

        upload = asyncio.create_task(upload_big())
        attempt = ""
        async with asyncio.timeout(60):
            while not attempt:
                pending = await _pending_purges(js, names)
                for nuid, name in pending.items():
                    if name == object_name and nuid != first_nuid:
                        attempt = nuid if await _has_chunks(js, names, nuid) else ""
                await asyncio.sleep(0.01)
        api.kill()
        await upload
        assert await _nuid(js, names, job) == first_nuid, "the upload finished before the kill"
        record = await _record_of(js, names, attempt)
        assert record is not None
        due = record.due
        assert due - time.time() <= SHORT_WINDOW, "not due the short window after its record"
        # Just shorter than the window: no API sweeps (both are down).
        await asyncio.sleep(max(0.0, due - JUST - time.time()))
        before_due = await _record_of(js, names, attempt)
        assert before_due is not None
        assert not before_due.confirmed
        assert await _has_chunks(js, names, attempt)
        await cluster.start_service(short_window_api)
        # Longer: confirmed by its sweep past its due, purged a grace past that.
        async with asyncio.timeout(due - time.time() + GRACE * 6):
            while await _attempt_left(js, names, attempt, object_name):  # noqa: ASYNC110
                await asyncio.sleep(0.5)  # the sweep runs in the API: poll the bucket
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            served = await client.get(f"/api/jobs/{job.id}/artifacts/{NAME}")
            await job.report(client, report_id="end", result={})
    finally:
        if not api.alive:
            await cluster.start_service(short_window_api)
        if not other_api.alive:
            await cluster.start_service("api")
    assert served.content == first


def _sweep_failures(api: Service) -> int:
    """Sweep requests that failed: a whole pass's, or one record's (left for the next pass)."""
    return api.log_count("artifact purges not swept") + api.log_count("artifact purge not settled")


@pytest.mark.parametrize("pause", [4.0, 11.0], ids=["4s-below-request", "11s-above-request"])
async def test_nats_paused_when_the_sweep_takes_a_purge_up(
    cluster: FaultCluster, js: JetStreamContext, pause: float
) -> None:
    """The API SIGKILLed within the grace after a re-upload and started again; NATS paused for
    4 s or 11 s from 1 s before the sweep may take the purge up (one grace past its due), so the
    sweep's requests (nats-py's 5 s) wait in it: 4 s, every request answered (no "not swept");
    11 s, a pass starts within the sweep period (5 s) of the pause's start, so its first request
    waits 6 s or more: it fails, logged, and a later pass purges. Either way the old chunks go
    and the new content is served whole."""
    names = Names(cluster.settings.prefix)
    old, new = b"o" * MIB, b"n" * MIB
    api = cluster.services["api"]
    try:
        async with cluster.client() as client:
            job = await _running_job(client)
            await _upload(client, job, old)
            old_nuid = await _nuid(js, names, job)
            await _upload(client, job, new)
            uploaded = asyncio.get_running_loop().time()
            api.kill()
        await cluster.start_service("api")
        not_swept = _sweep_failures(api)
        # Confirmed due a grace after the upload, taken up a grace later.
        takeover = uploaded + 2 * GRACE
        await asyncio.sleep(max(0.0, takeover - 1.0 - asyncio.get_running_loop().time()))
        assert await _has_chunks(js, names, old_nuid), "purged before the pause"
        cluster.pause_nats()
        try:
            await asyncio.sleep(pause)
        finally:
            cluster.resume_nats()
        async with asyncio.timeout(GRACE * 4):
            while await _has_chunks(js, names, old_nuid):  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # the sweep runs in the API: poll the bucket
        async with cluster.client() as client:
            served = await client.get(f"/api/jobs/{job.id}/artifacts/{NAME}")
            await job.report(client, report_id="end", result={})
    finally:
        if not api.alive:
            await cluster.start_service("api")
    assert served.content == new
    failed = _sweep_failures(api) - not_swept
    assert (failed >= 1) if pause > 10 else (failed == 0)
