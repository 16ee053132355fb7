"""A resumed download (``Range: bytes=N-``) reads the object store from the chunk that holds byte
N, not from byte 0 (``artifactstore.read_chunks``' ``start``): the chunks' sizes are walked
headers-only, never assumed, so objects another NATS client stored in chunks of other sizes
resume byte-exact too. The walk keeps the idle limit, and its consumer, like the reader's,
counts as a reader of the content for the purge of replaced content. Real nats-server."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.js.errors
import pytest
from hypothesis import strategies as st
from nats.js import JetStreamContext, api

from jobrunner.common import artifactstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from tests.tools.drawn_examples import examples
from tests.tools.nats_silence import thaw, thaw_after
from tests.tools.uneven_chunks import around_boundaries, stored_unevenly

CHUNK = artifactstore.CHUNK_BYTES
DATA = os.urandom(3 * CHUNK + 1000)  # four chunks, the last one short
UNEVEN_SIZES = [1000, 1, 4096, 333, 1000, 77, 2500, 4096, 10]  # chunks of another client
UNEVEN = os.urandom(sum(UNEVEN_SIZES))


async def _stored(js: JetStreamContext, names: Names, data: bytes) -> api.ObjectInfo:
    """``data`` stored as the runner stores a file (chunks of ``CHUNK`` bytes)."""
    await artifactstore.put_file(js, names, "big.bin", io.BytesIO(data), len(data), lambda: False)
    return await artifactstore.object_info(js, names, "big.bin")


async def _read_from(
    js: JetStreamContext, names: Names, info: api.ObjectInfo, start: int, idle: float = 5.0
) -> bytes:
    parts = artifactstore.read_chunks(js, names, info, idle, start)
    return b"".join([part async for part in parts])


async def _chunk_sequences(js: JetStreamContext, names: Names, nuid: str) -> list[int]:
    """The stream sequences of the object's chunks, one direct look each."""
    stream, subject = artifactstore.stream_name(names), artifactstore.chunk_subject(names, nuid)
    found: list[int] = []
    while True:
        try:
            msg = await js.get_msg(stream, (found[-1] if found else 0) + 1, subject, next=True)
        except nats.js.errors.NotFoundError:
            return found
        assert msg.seq is not None
        found.append(msg.seq)


async def _consumers(js: JetStreamContext, names: Names) -> list[api.ConsumerInfo]:
    return await js.consumers_info(artifactstore.stream_name(names))


@pytest.mark.parametrize(
    "start",
    [0, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 500, len(DATA) - 1],
    ids=["0", "boundary-1", "boundary", "boundary+1", "in-last-chunk", "last-byte"],
)
async def test_a_resumed_read_is_the_file_from_that_byte(
    js: JetStreamContext, settings: Settings, start: int
) -> None:
    """Read from byte N on, the object's bytes are exactly the file's from N, wherever N falls
    (a chunk's first or last byte, its middle, the file's last byte)."""
    names = Names(settings.prefix)
    info = await _stored(js, names, DATA)
    assert await _read_from(js, names, info, start) == DATA[start:]


@pytest.mark.parametrize("start", [0, CHUNK - 1, CHUNK, 2 * CHUNK + 7, len(DATA) - 1])
async def test_a_resumed_read_asks_nats_only_for_the_chunks_from_that_byte_on(
    js: JetStreamContext, settings: Settings, start: int
) -> None:
    """While a resumed read streams, its only consumer starts at the stream sequence of the
    chunk holding the first byte (the chunks before it are never sent); once the read ends, no
    consumer is left."""
    names = Names(settings.prefix)
    info = await _stored(js, names, DATA)
    sequences = await _chunk_sequences(js, names, info.nuid)
    assert len(sequences) == 4
    parts = artifactstore.read_chunks(js, names, info, 5.0, start)
    first = await anext(parts)
    readers = await _consumers(js, names)
    await parts.aclose()
    assert first == DATA[start : (start // CHUNK + 1) * CHUNK]
    assert len(readers) == 1, [r.name for r in readers]
    config = readers[0].config
    if start == 0:
        assert config.deliver_policy == api.DeliverPolicy.ALL
    else:
        assert config.deliver_policy == api.DeliverPolicy.BY_START_SEQUENCE
        assert config.opt_start_seq == sequences[start // CHUNK]
    assert await _consumers(js, names) == []


async def test_an_object_in_uneven_chunks_resumes_byte_exact_at_every_boundary(
    js: JetStreamContext, settings: Settings
) -> None:
    """An object another NATS client stored in chunks of many sizes (1 byte to 4 KiB): read
    from any chunk's first byte, or a byte either side of it, it is the file from there."""
    names = Names(settings.prefix)
    info = await stored_unevenly(js, names, "uneven.bin", UNEVEN, UNEVEN_SIZES)
    wrong = [
        start
        for start in around_boundaries(UNEVEN_SIZES)
        if await _read_from(js, names, info, start) != UNEVEN[start:]
    ]
    assert wrong == []


async def test_an_object_in_uneven_chunks_resumes_byte_exact_at_generated_offsets(
    js: JetStreamContext, settings: Settings
) -> None:
    """Read from generated offsets (Hypothesis) into an object of uneven chunks, the bytes
    are the file's from there; a start past the end reads nothing."""
    names = Names(settings.prefix)
    info = await stored_unevenly(js, names, "uneven.bin", UNEVEN, UNEVEN_SIZES)
    offsets = examples(st.integers(0, len(UNEVEN) + 3), 60)
    wrong = [s for s in offsets if await _read_from(js, names, info, s) != UNEVEN[s:]]
    assert wrong == []


async def test_a_resumed_read_is_seen_as_a_reader_from_its_walk_to_its_end(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge of replaced content waits while anyone reads it (``being_read``): a resumed
    read counts as a reader while it walks the chunks' sizes, when its reader takes over, and
    no longer once it ends."""
    names = Names(settings.prefix)
    info = await _stored(js, names, DATA)
    walking, looked = asyncio.Event(), asyncio.Event()
    chunk_holding = artifactstore._chunk_holding

    async def held_walk(*args: Any, **kwargs: Any) -> Any:
        walking.set()
        await looked.wait()
        return await chunk_holding(*args, **kwargs)

    monkeypatch.setattr(artifactstore, "_chunk_holding", held_walk)
    parts = artifactstore.read_chunks(js, names, info, 5.0, 3 * CHUNK + 1)
    first = asyncio.create_task(anext(parts))
    await asyncio.wait_for(walking.wait(), 10)
    while_walking = await artifactstore.being_read(js, names, info.nuid)
    walkers = [c.config.headers_only for c in await _consumers(js, names)]
    looked.set()
    assert await first == DATA[3 * CHUNK + 1 :]
    while_reading = await artifactstore.being_read(js, names, info.nuid)
    await parts.aclose()
    assert (while_walking, walkers, while_reading) == (True, [True], True)
    assert not await artifactstore.being_read(js, names, info.nuid)


IDLE = 3.0  # the read's idle limit in the pause tests
PAUSE_SHORTER = IDLE - 1.0  # a request's wait (READ_WAIT_SECONDS) under the limit
PAUSE_LONGER = IDLE + artifactstore.READ_WAIT_SECONDS + 0.5  # past the limit and its error


@pytest.fixture
async def own_js(own_nats: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    """JetStream of a nats-server of the test's own (frozen by it), with an artifacts bucket."""
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    await js.create_object_store(Names("resume").artifacts_bucket)
    yield js
    await nc.close()


@pytest.mark.parametrize(
    ("pause", "whole"),
    [(PAUSE_SHORTER, True), (PAUSE_LONGER, False)],
    ids=["shorter-than-idle", "longer-than-idle"],
)
async def test_nats_paused_during_the_walk(
    own_nats: EmbeddedNats,
    own_js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
    pause: float,
    whole: bool,
) -> None:
    """NATS frozen while a resumed read walks the chunks' sizes (one size a request): shorter
    than the idle limit, the read goes on and is the file from that byte; longer, it ends with
    ``ReadStalled`` (the client sees a cut body, never a hang) and leaves no consumer."""
    names = Names("resume")
    info = await _stored(own_js, names, DATA)
    monkeypatch.setattr(artifactstore, "WALK_BATCH_CHUNKS", 1)
    sizes_read = 0
    payload_size = artifactstore._payload_size
    thawing: list[asyncio.TimerHandle] = []

    def frozen_after_the_first(msg: Any) -> int:
        nonlocal sizes_read
        sizes_read += 1
        if sizes_read == 1:  # the walk asks for the next size from a frozen server
            thawing.append(thaw_after(own_nats, pause))
        return payload_size(msg)

    monkeypatch.setattr(artifactstore, "_payload_size", frozen_after_the_first)
    start = 3 * CHUNK + 10
    try:
        if whole:
            assert await _read_from(own_js, names, info, start, IDLE) == DATA[start:]
        else:
            with pytest.raises(artifactstore.ReadStalled):
                await _read_from(own_js, names, info, start, IDLE)
            assert sizes_read == 1  # stalled in the walk, not after it
    finally:
        for handle in thawing:
            handle.cancel()
        thaw(own_nats)
    assert await _consumers(own_js, names) == []
