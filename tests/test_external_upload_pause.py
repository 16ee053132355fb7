"""An external worker's upload with NATS frozen under it (SIGSTOP), just shorter and just longer
than the upload's patience (``UPLOAD_PATIENCE_SECONDS``, shortened here to keep the test fast):
shorter, the file is stored whole (201, digest and bytes match); longer, ``503
EVENTS_UNAVAILABLE`` with Retry-After and nothing listed, and the same file sent again is stored
whole. The job still ends once, with its report."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import artifactupload
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.freeze import freeze
from tests.system import System
from tests.tools.runners import wait_status

PATIENCE = 4.0
DATA = os.urandom(3 * 1024 * 1024)  # 24 chunks: more than the upload's pipeline of 16


@pytest.mark.parametrize(
    ("pause", "stored"),
    [
        pytest.param(PATIENCE - 2.0, True, id="shorter"),
        pytest.param(PATIENCE + 3.0, False, id="longer"),
    ],
)
async def test_nats_frozen_during_an_external_upload(
    settings: Settings,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    pause: float,
    stored: bool,
) -> None:
    monkeypatch.setattr(artifactupload, "UPLOAD_PATIENCE_SECONDS", PATIENCE)
    settings = msgspec.structs.replace(
        settings, nats_url=own_nats.url, job_types_file=EXTERNAL_TYPES, lease_ttl_seconds=60.0
    )
    system = System(settings)
    assert own_nats.proc is not None
    own_nats_pid = own_nats.proc.pid
    try:
        await system.start()
        async with system.client() as client, worker_client(system.base_url) as worker:
            job = await start_external(client, file="a.pdf")
            await job.report_when_held(worker, progress=1)
            headers = {"Authorization": f"Bearer {job.token}"}
            url = f"{job.path}/artifacts/out/data.bin"
            frozen = asyncio.Event()

            async def body() -> AsyncIterator[bytes]:
                yield DATA[:1024]
                # The API has checked the token and the job's status by now (it reads the body
                # only after): the rest arrives, and the body ends, with NATS frozen, so the
                # upload to the object store meets the pause.
                await asyncio.sleep(1.0)
                freeze(own_nats_pid)
                frozen.set()
                yield DATA[1024:]

            sending = asyncio.create_task(worker.put(url, content=body(), headers=headers))
            try:
                await frozen.wait()
                await asyncio.sleep(pause)  # the fault itself lasts this long
            finally:
                os.kill(own_nats_pid, signal.SIGCONT)
            put = await sending
            if stored:
                assert put.status_code == 201, put.text
            else:
                assert put.status_code == 503, put.text
                assert put.json()["error"]["code"] == "EVENTS_UNAVAILABLE"
                assert put.headers["retry-after"]
                listed = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()["items"]
                assert listed == []
                put = await worker.put(url, content=DATA, headers=headers)
                assert put.status_code == 201, put.text
            assert put.json()["sha256"] == hashlib.sha256(DATA).hexdigest()
            assert (await job.report(worker, result={"pages": 1})).status_code < 300
            ended = await wait_status(client, job.id, "completed", "failed", timeout=60)
            listed = (await client.get(f"/api/jobs/{job.id}/artifacts")).json()["items"]
            download = await client.get(listed[0]["url"])
    finally:
        await system.stop()
    assert ended["status"] == "completed", ended
    assert [(a["name"], a["size"]) for a in listed] == [("out/data.bin", len(DATA))]
    assert download.content == DATA
