"""The artifact store's publishes (a file's chunks, its description) and the pending-purge
records' writes whose ack a NATS restart lost: through the connection's ack inbox they fail as
soon as nats-py is connected again (``AckInbox.reconnected``), not after their ack wait, and the
upload that met it starts again at once; the object is stored once (one description, the lost
attempt's chunks purged) and read back whole.

As ``tests/test_ackinbox_restart.py`` for events: a real nats-server of the test's own,
SIGKILLed and started again on the same port and store, behind ``tests/ackholding_proxy.py``
(it holds the publish's ack, then drops it with the connection); every ack wait 30 s, each
publish over within 10 s of the restart or failed (only the reconnect can have ended it). And a
pipelined chunk's refusal (the bucket full), answered through the inbox, fails the upload at
once."""

from __future__ import annotations

import asyncio
import io
import os
import time
import uuid
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig

from jobrunner.common import ackinbox, artifactpurges, artifactstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from tests.tools.restartable_nats import ACK_TIMEOUT, SOON, restartable

pytestmark = pytest.mark.timeout(120)

# Four chunks: the pipeline has several in flight when the first one's ack is held.
CONTENT = os.urandom(3 * artifactstore.CHUNK_BYTES + 1000)
OBJECT = "out/report.bin"


@pytest.fixture(autouse=True)
def long_ack_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ackinbox, "ACK_TIMEOUT", ACK_TIMEOUT)
    monkeypatch.setattr(artifactstore, "ACK_WAIT_SECONDS", ACK_TIMEOUT)


async def _messages(js: JetStreamContext, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


@pytest.mark.parametrize("lost", ["chunk", "description"])
async def test_an_upload_whose_ack_a_restart_lost_is_stored_once_and_soon(
    tmp_path: Path, lost: str
) -> None:
    """``put_file`` (the runner's upload of a job's artifact) with the ack of its first chunk,
    or of its description, lost with a NATS restart: the attempt fails at the reconnect and the
    next one stores the object; the name serves the whole file, and the bucket holds its chunks
    and one description only (the lost attempt's chunks purged, a description of it replaced)."""
    async with restartable(tmp_path) as running:
        names: Names = running.names
        js = running.nc.jetstream(timeout=ACK_TIMEOUT)
        kind = "C" if lost == "chunk" else "M"
        held = f"$O.{names.artifacts_bucket}.{kind}."
        running.proxy.arm(held, prefix=True)
        uploading = asyncio.create_task(
            artifactstore.put_file(
                js, names, OBJECT, io.BytesIO(CONTENT), len(CONTENT), lambda: False
            )
        )
        await running.strike(held)
        restarted = time.monotonic()
        done, _ = await asyncio.wait((uploading,), timeout=SOON)
        assert uploading in done, f"not stored {SOON} s after the restart (ack wait 30 s)"
        stored = uploading.result()
        took = time.monotonic() - restarted
        assert took < SOON

        info = await artifactstore.object_info(js, names, OBJECT)
        assert (info.nuid, info.size) == (stored.nuid, len(CONTENT))
        read = [chunk async for chunk in artifactstore.read_chunks(js, names, info, 5.0)]
        assert b"".join(read) == CONTENT
        stream = artifactstore.stream_name(names)
        async with asyncio.timeout(SOON):
            while await _messages(js, stream) != info.chunks + 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the lost attempt's chunks are purged in the back


async def test_a_purge_record_whose_ack_a_restart_lost_fails_soon(tmp_path: Path) -> None:
    """A pending-purge record's write (an external upload's, before its first chunk) whose ack
    the restart lost raises ``AckLostWithConnection`` (a ``nats.errors.TimeoutError``, which
    the upload retries as one) within 10 s, not after its 30 s wait; the record is stored
    once."""
    async with restartable(tmp_path) as running:
        names: Names = running.names
        js = running.nc.jetstream(timeout=ACK_TIMEOUT)
        nuid = uuid.uuid4().hex
        subject = f"$KV.{names.artifact_purges_bucket}.{nuid}"
        running.proxy.arm(subject)
        window = Settings().artifact_upload_window_seconds
        recording = asyncio.create_task(artifactpurges.record(js, names, nuid, OBJECT, window))
        await running.strike(subject)
        done, _ = await asyncio.wait((recording,), timeout=SOON)
        assert recording in done, f"still waiting {SOON} s after the restart (ack wait 30 s)"
        with pytest.raises(nats.errors.TimeoutError) as raised:
            recording.result()
        assert isinstance(raised.value, ackinbox.AckLostWithConnection)
        info = await js.stream_info(f"KV_{names.artifact_purges_bucket}", subjects_filter=subject)
        assert (info.state.subjects or {}).get(subject, 0) == 1


async def test_a_pipelined_chunk_refused_with_the_bucket_full_fails_the_upload_at_once(
    own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket too small for the file: JetStream refuses a pipelined chunk ("bucket full"),
    and that refusal raises from the first (pipelined) attempt, not after the chunk's 30 s ack
    wait and a second, one-at-a-time attempt; no entry left in the ack inbox."""
    attempts: list[bool] = []
    put_chunks = artifactstore._put_chunks

    async def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        attempts.append(args[7])  # pipelined
        return await put_chunks(*args, **kwargs)

    monkeypatch.setattr(artifactstore, "_put_chunks", counting)
    names = Names("fullbucket")
    nc = await nats.connect(own_nats.url)
    try:
        js = nc.jetstream(timeout=ACK_TIMEOUT)
        await js.create_object_store(
            names.artifacts_bucket, config=ObjectStoreConfig(max_bytes=300_000)
        )
        data = os.urandom(20 * artifactstore.CHUNK_BYTES)
        with pytest.raises(nats.js.errors.APIError) as raised:
            await asyncio.wait_for(
                artifactstore.put_file(
                    js, names, "big.bin", io.BytesIO(data), len(data), lambda: False
                ),
                2 * ACK_TIMEOUT,
            )
        assert artifactstore._bucket_full(raised.value), raised.value
        assert attempts == [True], attempts
        inbox = ackinbox.of(nc)
        assert inbox._timed == {}, inbox._timed
        assert inbox._waiting == {}, inbox._waiting
    finally:
        await nc.close()
