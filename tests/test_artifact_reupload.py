"""One artifact name sent again, by two uploads at once: the listing ends with the sha256 and
size of the bytes the bucket serves.

The bucket keeps the description written last; the listing, the ``ArtifactStored`` projected
last. The interleaving that parts them (upload A's description, then B's description and event,
then A's event) is forced by holding A's event until B has answered. (Rounds of two uploads at
once without a hold, 4 x 3, found no mismatch on main: not kept.)
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgspec
import nats
import nats.js.errors
import pytest

from jobrunner.common import artifactstore, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from tests.external_support import EXTERNAL_TYPES, ExternalJob, start_external, worker_client
from tests.system import System
from tests.tools.runners import wait_status

NAME = "result.bin"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A short grace before replaced content is purged (artifact_read_idle_seconds).
    return msgspec.structs.replace(
        settings,
        job_types_file=EXTERNAL_TYPES,
        artifact_read_idle_seconds=2.0,
        artifact_purge_sweep_seconds=1.0,
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _put(worker: Any, job: ExternalJob, data: bytes) -> None:
    response = await worker.put(
        f"{job.path}/artifacts/{NAME}",
        content=data,
        headers={"Authorization": f"Bearer {job.token}"},
    )
    assert response.status_code == 201, response.text


async def _listing_and_bytes(client: Any, job: ExternalJob) -> tuple[tuple[Any, Any], bytes]:
    """Once the job's end is projected (so are its artifacts' events, which come before it)."""
    await wait_status(client, job.id, "completed")
    items = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()["items"]
    assert [item["name"] for item in items] == [NAME]
    served = await client.get(items[0]["url"])
    assert served.status_code == 200, served.text
    return (items[0]["sha256"], items[0]["size"]), served.content


async def test_the_upload_whose_event_comes_last_but_description_first_is_not_listed(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = b"A" * 300_000, b"B" * 200_000
    held = asyncio.Event()
    release = asyncio.Event()
    publish = eventstore.publish

    async def publish_holding_the_first(js: Any, names: Any, event: Any, **kwargs: Any) -> Any:
        if isinstance(event, events.ArtifactStored) and event.sha256 == _sha(first):
            held.set()
            await release.wait()  # the first upload's description is written; its event waits
        return await publish(js, names, event, **kwargs)

    monkeypatch.setattr(eventstore, "publish", publish_holding_the_first)
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        upload_a = asyncio.create_task(_put(worker, job, first))
        await asyncio.wait_for(held.wait(), 30)
        await _put(worker, job, second)  # its description and its event, both after A's
        release.set()
        await asyncio.wait_for(upload_a, 30)
        await job.report(worker, result={})
        (sha256, size), served = await _listing_and_bytes(client, job)
    assert served == second, "the bucket serves the description written last"
    assert (sha256, size) == (_sha(served), len(served)), (
        f"the listing names {'the first' if sha256 == _sha(first) else 'other'} upload's bytes, "
        "not those served"
    )


async def test_content_sent_again_after_other_content_is_listed(system: System) -> None:
    """A, then B, then A again, one after the other: the listing names A. (An event id made
    from the content alone made the third announcement a duplicate of the first, dropped.)"""
    first, second = b"A" * 100_000, b"B" * 50_000
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        for data in (first, second, first):
            await _put(worker, job, data)
        await job.report(worker, result={})
        (sha256, size), served = await _listing_and_bytes(client, job)
    assert served == first
    assert (sha256, size) == (_sha(first), len(first))


async def test_the_content_whose_description_lost_is_purged(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both uploads read the name's description before either wrote its own (B is held before
    its chunks go out until A's description is written): B's description wins, and it names
    only the content before both as the one it replaced. A's chunks must still go: A, seeing B's
    object served, purges its own (after the grace, no download reading it)."""
    first, second = b"A" * 300_000, b"B" * 200_000
    a_written, release = asyncio.Event(), asyncio.Event()
    a_nuid: list[str] = []
    publish, put_file = eventstore.publish, artifactstore.put_file

    async def publish_holding_the_first(js: Any, names: Any, event: Any, **kwargs: Any) -> Any:
        if isinstance(event, events.ArtifactStored) and event.sha256 == _sha(first):
            a_nuid.append(event.event_id.rsplit("-", 1)[1])
            a_written.set()
            await release.wait()
        return await publish(js, names, event, **kwargs)

    async def put_file_holding_the_second(*args: Any, **kwargs: Any) -> Any:
        if args[4] == len(second):
            await a_written.wait()  # B read the description before A wrote its own
        return await put_file(*args, **kwargs)

    monkeypatch.setattr(eventstore, "publish", publish_holding_the_first)
    monkeypatch.setattr(artifactstore, "put_file", put_file_holding_the_second)
    nc = await nats.connect(system.settings.nats_url)
    try:
        async with system.client() as client, worker_client(system.base_url) as worker:
            job = await start_external(client, file="a.pdf")
            await job.report_when_held(worker, progress=10)
            upload_b = asyncio.create_task(_put(worker, job, second))
            upload_a = asyncio.create_task(_put(worker, job, first))
            await asyncio.wait_for(upload_b, 30)
            release.set()
            await asyncio.wait_for(upload_a, 30)
            names = Names(system.settings.prefix)
            subject = f"$O.{names.artifacts_bucket}.C.{a_nuid[0]}"
            async with asyncio.timeout(30):
                while True:
                    try:
                        await nc.jetstream().get_last_msg(artifactstore.stream_name(names), subject)
                    except nats.js.errors.NotFoundError:
                        break
                    await asyncio.sleep(0.2)  # the purge runs in the API's background
            await job.report(worker, result={})
            (sha256, _), served = await _listing_and_bytes(client, job)
    finally:
        await nc.close()
    assert served == second
    assert sha256 == _sha(second)


async def test_a_losing_upload_done_before_the_winner_wrote_is_purged(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session 21's leak 1: B reads the name before A writes, A finishes entirely (201: A's
    own look finds A served), then B stores its description, which names nothing it replaced.
    No one knows A's content but its pending-purge record (``artifactpurges``): the sweep finds
    the name serving B, not A, and purges A's chunks. On main they stayed until the max age."""
    first, second = b"A" * 300_000, b"B" * 200_000
    a_done = asyncio.Event()
    put_file = artifactstore.put_file

    async def put_file_holding_the_second(*args: Any, **kwargs: Any) -> Any:
        if args[4] == len(second):
            await a_done.wait()  # B read the name (nothing there) before A wrote
        return await put_file(*args, **kwargs)

    monkeypatch.setattr(artifactstore, "put_file", put_file_holding_the_second)
    # A short upload window: A's record is due, and swept, soon after B's description.
    short = msgspec.structs.replace(settings, artifact_upload_window_seconds=5.0)
    nc = await nats.connect(settings.nats_url)
    try:
        async with System(short) as system:
            await system.start()
            async with system.client() as client, worker_client(system.base_url) as worker:
                job = await start_external(client, file="a.pdf")
                await job.report_when_held(worker, progress=10)
                upload_b = asyncio.create_task(_put(worker, job, second))
                await asyncio.sleep(0.5)  # B has read the name and waits before its chunks
                await asyncio.wait_for(_put(worker, job, first), 30)
                names = Names(system.settings.prefix)
                object_name = names.artifact_object(job.id, NAME)
                a_nuid = (await artifactstore.object_info(nc.jetstream(), names, object_name)).nuid
                a_done.set()
                await asyncio.wait_for(upload_b, 30)
                subject = artifactstore.chunk_subject(names, a_nuid)
                async with asyncio.timeout(40):
                    while True:
                        try:
                            await nc.jetstream().get_last_msg(
                                artifactstore.stream_name(names), subject
                            )
                        except nats.js.errors.NotFoundError:
                            break
                        await asyncio.sleep(0.2)  # the sweep runs in the API's background
                await job.report(worker, result={})
                (sha256, _), served = await _listing_and_bytes(client, job)
    finally:
        await nc.close()
    assert served == second
    assert sha256 == _sha(second)
