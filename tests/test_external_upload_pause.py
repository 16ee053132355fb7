"""An external worker's upload with NATS frozen under it (SIGSTOP) once the upload to the object
store has begun, just shorter and just longer than the upload's patience
(``UPLOAD_PATIENCE_SECONDS``, shortened here to keep the test fast): shorter, the file is stored
whole (201, digest and bytes match); longer, ``503 EVENTS_UNAVAILABLE`` with Retry-After and
nothing listed, and the same file sent again is stored whole. The job still ends once, with its
report.

The freeze comes from the upload's own hook (its ``should_stop``, asked before each chunk): after
the first chunk is sent, before the second. So it lands in ``put_file``, past the API's other
NATS requests (the token and status reads, ``object_info``, each with its own timeout). The
chunks' ack wait (``ACK_WAIT_SECONDS``) is set well above both pauses, so the patience alone
decides: with a patience much longer, the longer case stores the file (201) and fails here; with
one much shorter, the shorter case does.

The patience is checked before each chunk, not while a chunk's ack is awaited: a response can
take up to the patience plus one ack wait (here the longer case answers when NATS thaws, at
5.5 s, its chunks' acks arriving late; with NATS gone for good it would be 4 + 12 s)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from typing import IO

import msgspec
import pytest
from nats.js import JetStreamContext

from jobrunner.common import artifactstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import artifactupload
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.freeze import freeze, thaw
from tests.system import System
from tests.tools.runners import wait_status

PATIENCE = 4.0
ACK_WAIT = 12.0  # longer than either pause: no chunk's ack wait ends during the freeze
DATA = os.urandom(3 * 1024 * 1024)  # 24 chunks: more than the upload's pipeline of 16


@pytest.mark.parametrize(
    ("pause", "stored"),
    [
        pytest.param(PATIENCE - 1.5, True, id="shorter"),
        pytest.param(PATIENCE + 1.5, False, id="longer"),
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
    monkeypatch.setattr(artifactstore, "ACK_WAIT_SECONDS", ACK_WAIT)
    settings = msgspec.structs.replace(
        settings, nats_url=own_nats.url, job_types_file=EXTERNAL_TYPES, lease_ttl_seconds=60.0
    )
    assert own_nats.proc is not None
    own_nats_pid = own_nats.proc.pid
    frozen = asyncio.Event()
    real_put_file = artifactstore.put_file

    async def put_file_frozen_once_begun(
        js: JetStreamContext,
        names: Names,
        object_name: str,
        source: IO[bytes],
        size: int,
        should_stop: Callable[[], bool],
        replaces: str | None = None,
        records: artifactstore.AttemptRecords | None = None,
    ) -> artifactstore.StoredObject:
        asked = 0

        def freezing_should_stop() -> bool:
            nonlocal asked
            asked += 1
            # Asked once before the first attempt, then before each chunk: the third time is
            # after the first chunk went out. Frozen once, for ``pause`` (thawed by the test).
            if asked == 3 and not frozen.is_set():
                freeze(own_nats_pid)
                frozen.set()
            return should_stop()

        return await real_put_file(
            js, names, object_name, source, size, freezing_should_stop, replaces, records
        )

    system = System(settings)
    try:
        await system.start()
        async with system.client() as client, worker_client(system.base_url) as worker:
            job = await start_external(client, file="a.pdf")
            await job.report_when_held(worker, progress=1)
            headers = {"Authorization": f"Bearer {job.token}"}
            url = f"{job.path}/artifacts/out/data.bin"
            monkeypatch.setattr(artifactstore, "put_file", put_file_frozen_once_begun)
            sending = asyncio.create_task(worker.put(url, content=DATA, headers=headers))
            try:
                waiting = asyncio.ensure_future(frozen.wait())
                await asyncio.wait([sending, waiting], return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                assert frozen.is_set(), (await sending).text
                await asyncio.sleep(pause)  # the fault itself lasts this long
            finally:
                thaw(own_nats_pid)
            put = await sending
            monkeypatch.setattr(artifactstore, "put_file", real_put_file)
            if stored:
                assert put.status_code == 201, put.text
            else:
                assert put.status_code == 503, put.text
                assert put.json()["error"]["code"] == "EVENTS_UNAVAILABLE"
                assert put.headers["retry-after"] == "2"
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
