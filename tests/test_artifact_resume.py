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
from dataclasses import replace
from typing import Any

import nats
import nats.js.errors
import pytest
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from structlog.testing import capture_logs

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
    at = await artifactstore.resume_point(js, names, info, idle, start)
    parts = artifactstore.read_chunks(js, names, info, idle, at)
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
    """While a resumed read streams, its reader starts at the stream sequence of the chunk
    holding the first byte (the chunks before it are never sent; only their sizes were, to the
    headers-only walk, still there); once the read ends, no consumer is left."""
    names = Names(settings.prefix)
    info = await _stored(js, names, DATA)
    sequences = await _chunk_sequences(js, names, info.nuid)
    assert len(sequences) == 4
    at = await artifactstore.resume_point(js, names, info, 5.0, start)
    parts = artifactstore.read_chunks(js, names, info, 5.0, at)
    first = await anext(parts)
    consumers = await _consumers(js, names)
    await parts.aclose()
    assert first == DATA[start : (start // CHUNK + 1) * CHUNK]
    readers = [c.config for c in consumers if not c.config.headers_only]
    walks = [c.config for c in consumers if c.config.headers_only]
    assert (len(readers), len(walks)) == (1, 0 if start == 0 else 1)
    if start == 0:
        assert readers[0].deliver_policy == api.DeliverPolicy.ALL
    else:
        assert readers[0].deliver_policy == api.DeliverPolicy.BY_START_SEQUENCE
        assert readers[0].opt_start_seq == sequences[start // CHUNK]
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
    read counts as a reader while it walks the chunks' sizes, between the walk and the read,
    while it reads (the walk's consumer still there beside the reader), and no longer once it
    ends."""
    names = Names(settings.prefix)
    info = await _stored(js, names, DATA)
    walking, looked = asyncio.Event(), asyncio.Event()
    reader = artifactstore._reader

    async def walk_held_once_made(*args: Any, **kwargs: Any) -> Any:
        sub = await reader(*args, **kwargs)
        if kwargs.get("headers_only"):
            walking.set()
            await looked.wait()
        return sub

    monkeypatch.setattr(artifactstore, "_reader", walk_held_once_made)
    finding = asyncio.create_task(artifactstore.resume_point(js, names, info, 5.0, 3 * CHUNK + 1))
    await asyncio.wait_for(walking.wait(), 10)
    while_walking = await artifactstore.being_read(js, names, info.nuid)
    looked.set()
    at = await finding
    before_reading = await artifactstore.being_read(js, names, info.nuid)
    parts = artifactstore.read_chunks(js, names, info, 5.0, at)
    assert await anext(parts) == DATA[3 * CHUNK + 1 :]
    while_reading = await artifactstore.being_read(js, names, info.nuid)
    consumers = sorted(bool(c.config.headers_only) for c in await _consumers(js, names))
    await parts.aclose()
    assert (while_walking, before_reading, while_reading) == (True, True, True)
    assert consumers == [False, True]  # the reader and the walk
    assert not await artifactstore.being_read(js, names, info.nuid)
    assert await _consumers(js, names) == []


async def test_a_scan_cut_between_pages_by_the_handover_to_the_reader_sees_the_read(
    js: JetStreamContext, settings: Settings
) -> None:
    """The server lists consumers by name, 256 a page. The walk's consumer is on the second
    page; between the pages of a purge's scan the read begins, its reader's consumer landing
    on the first page (already read). Had the walk's consumer gone then, the counts before and
    after the scan and the consumers seen would agree and the content be purged under the
    read; it stays until the read ends, so the scan sees it. (Consumers named here so their
    order is known: nats-py draws random names.)"""
    names = Names(settings.prefix)
    info = await _stored(js, names, DATA)
    stream = artifactstore.stream_name(names)
    for i in range(artifactstore.LIST_PAGE):  # before the walk by name: it is on page two
        config = api.ConsumerConfig(
            name=f"k-pad{i:04d}",
            filter_subject=artifactstore.chunk_subject(names, f"pad{i}"),
            inactive_threshold=60.0,
        )
        await js.add_consumer(stream, config)
    pull_subscribe = js.pull_subscribe

    async def named(subject: str, **kwargs: Any) -> Any:
        config = kwargs["config"]
        name = "m-walk" if config.headers_only else "a-reader"  # page two; page one
        named_config = replace(config, name=name, filter_subject=subject)
        await js.add_consumer(kwargs["stream"], config=named_config)
        return await js.pull_subscribe_bind(consumer=name, stream=kwargs["stream"])

    js.pull_subscribe = named  # type: ignore[method-assign]
    at = await artifactstore.resume_point(js, names, info, 5.0, CHUNK + 1)
    parts = artifactstore.read_chunks(js, names, info, 5.0, at)
    listing = js.consumers_info
    first_pages: list[list[str]] = []  # as the scan read it, and once the read began

    async def reading_after_the_first_page(stream: str, offset: int | None = None) -> Any:
        page = await listing(stream, offset=offset)
        if not offset and not first_pages:
            first_pages.append([c.name for c in page])
            assert await anext(parts) == DATA[CHUNK + 1 : 2 * CHUNK]
            first_pages.append([c.name for c in await listing(stream, offset=0)])
        return page

    js.consumers_info = reading_after_the_first_page  # type: ignore[method-assign]
    try:
        seen = await artifactstore.being_read(js, names, info.nuid)
    finally:
        js.pull_subscribe = pull_subscribe  # type: ignore[method-assign]
        js.consumers_info = listing  # type: ignore[method-assign]
        await parts.aclose()
    assert seen
    assert {"m-walk", "a-reader"} & set(first_pages[0]) == set()
    assert ("a-reader" in first_pages[1], "m-walk" in first_pages[1]) == (True, False)


class Killed(BaseException):
    """The API process ending where it stands (no cleanup of its own runs)."""


READER_GONE_AFTER = 2.0  # the consumers' inactive threshold in the API-killed test


async def test_a_walk_left_by_a_killed_api_goes_by_its_inactive_threshold(
    own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API killed mid-walk: nothing of it runs again (no consumer dropped), its connection
    is gone. The walk's consumer, which holds back a purge of the content, is still there just
    before its inactive threshold and gone just after it."""
    names = Names("resume")
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    await js.create_object_store(names.artifacts_bucket)
    info = await _stored(js, names, DATA)
    monkeypatch.setattr(artifactstore, "READER_INACTIVE_SECONDS", READER_GONE_AFTER)
    monkeypatch.setattr(artifactstore, "WALK_BATCH_CHUNKS", 1)

    def killed_at_the_first_size(msg: Any) -> int:
        raise Killed

    async def nothing_dropped(*args: Any) -> None:
        return None  # a killed process drops nothing

    monkeypatch.setattr(artifactstore, "_payload_size", killed_at_the_first_size)
    monkeypatch.setattr(artifactstore, "_drop_consumer", nothing_dropped)
    with pytest.raises(Killed):
        await artifactstore.resume_point(js, names, info, 0.5, 2 * CHUNK)
    await nc.close()
    killed_at = asyncio.get_running_loop().time()
    nc = await nats.connect(own_nats.url)
    try:
        js = nc.jetstream()
        await asyncio.sleep(READER_GONE_AFTER - 0.5)
        just_before = [c.config.headers_only for c in await _consumers(js, names)]
        gone_at = None
        while gone_at is None and asyncio.get_running_loop().time() - killed_at < 15:
            if not await _consumers(js, names):
                gone_at = asyncio.get_running_loop().time() - killed_at
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    assert just_before == [True]
    assert gone_at is not None


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


async def test_a_walk_that_ends_before_the_start_reads_nothing_and_says_so(
    js: JetStreamContext, settings: Settings
) -> None:
    """A description that claims more bytes than its chunks hold, read from past them: nothing
    comes, a warning names the object, and no consumer is left."""
    names = Names(settings.prefix)
    info = await _stored(js, names, DATA)
    claiming_more = replace(info, size=len(DATA) + 100)
    with capture_logs() as logs:
        read = await _read_from(js, names, claiming_more, len(DATA) + 10)
    warned = [e for e in logs if e["event"] == "artifact chunks end before the range"]
    assert read == b""
    assert [(e["object_name"], e["chunk_bytes"]) for e in warned] == [("big.bin", len(DATA))]
    assert await _consumers(js, names) == []


def test_a_chunk_without_its_size_is_refused_rather_than_counted_whole() -> None:
    """A server that ignored ``headers_only`` would send whole chunks to the walk, a thousand
    at a time (128 MiB): a message without ``Nats-Msg-Size`` stops it."""
    whole_chunk = Msg(None, data=b"x" * 100)  # type: ignore[arg-type]
    with pytest.raises(artifactstore.ChunkSizeUnknown):
        artifactstore._payload_size(whole_chunk)
    sized = Msg(None, data=b"", headers={artifactstore.MSG_SIZE_HEADER: "100"})  # type: ignore[arg-type]
    assert artifactstore._payload_size(sized) == 100
