"""NATS paused (SIGSTOP) right after an upload's ``ArtifactStored``, where it reads which object
the bucket serves (``artifactupload._announce_what_is_served``), with the interleaving of
tests/test_artifact_reupload.py forced: the first upload's description, the second upload whole,
then the first one's event. Each NATS request there has nats-py's 5 s; the look is asked again
until the upload's patience (``UPLOAD_PATIENCE_SECONDS``, 8 s here).

Just shorter than the request's 5 s, and just longer (asked again): 201 and the listing true.
Longer than the patience (14 s: the second look times out past it): 503 EVENTS_UNAVAILABLE;
the same file sent again answers 201 and the listing ends true.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgspec
import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import artifactupload
from tests.external_support import EXTERNAL_TYPES, ExternalJob, start_external, worker_client
from tests.freeze import freeze, thaw_later
from tests.system import System
from tests.tools.runners import wait_status

NAME = "result.bin"
PATIENCE = 8.0


@pytest.fixture
def settings(settings: Settings, own_nats: EmbeddedNats) -> Settings:
    # A lease longer than any pause: the job must still be running when its worker reports.
    return msgspec.structs.replace(
        settings, job_types_file=EXTERNAL_TYPES, nats_url=own_nats.url, lease_ttl_seconds=60.0
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _put(worker: Any, job: ExternalJob, data: bytes) -> Any:
    return await worker.put(
        f"{job.path}/artifacts/{NAME}",
        content=data,
        headers={"Authorization": f"Bearer {job.token}"},
    )


@pytest.mark.parametrize(("pause", "answered"), [(4.0, True), (6.5, True), (14.0, False)])
async def test_nats_paused_where_the_upload_reads_what_is_served(
    system: System,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    pause: float,
    answered: bool,
) -> None:
    first, second = b"A" * 300_000, b"B" * 200_000
    held, release = asyncio.Event(), asyncio.Event()
    publish = eventstore.publish
    assert own_nats.proc is not None
    pid = own_nats.proc.pid

    async def publish_then_pause(js: Any, names: Any, event: Any, **kwargs: Any) -> Any:
        ours = isinstance(event, events.ArtifactStored) and event.sha256 == _sha(first)
        if ours and not held.is_set():
            held.set()
            await release.wait()
            result = await publish(js, names, event, **kwargs)
            freeze(pid)  # the next NATS request is the look at what is served
            thaw_later(pause, pid)
            return result
        return await publish(js, names, event, **kwargs)

    monkeypatch.setattr(eventstore, "publish", publish_then_pause)
    monkeypatch.setattr(artifactupload, "UPLOAD_PATIENCE_SECONDS", PATIENCE)
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=10)
        upload_a = asyncio.create_task(_put(worker, job, first))
        await asyncio.wait_for(held.wait(), 30)
        assert (await _put(worker, job, second)).status_code == 201
        release.set()
        response = await asyncio.wait_for(upload_a, 60)
        if answered:
            assert response.status_code == 201, response.text
        else:
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "EVENTS_UNAVAILABLE"
            assert (await _put(worker, job, first)).status_code == 201  # sent again, as told
        assert (await job.report(worker, result={})).status_code == 200
        await wait_status(client, job.id, "completed")
        items = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()["items"]
        served = (await client.get(items[0]["url"])).content
    assert (items[0]["sha256"], items[0]["size"]) == (_sha(served), len(served))
