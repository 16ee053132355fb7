"""The stream reader's frames over a real socket (common/streamreader.py): from a server that
sends a malformed frame (a scripted server, tests/tools/scripted_nats.py), the messages before it
are handed out and the frame is refused at once with a clear error, however long the server goes
on sending; and from a real nats-server restarted with a lower ``max_payload``, a message
stored before, larger than that, is read whole."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.streamreader import (
    HEADERS_ALLOWANCE,
    MAX_LINE,
    PAYLOAD_BOUND,
    StreamReader,
    StreamReaderError,
)
from jobrunner.contracts.names import Names
from jobrunner.embedded.scratch import scratch_dir
from tests.servers import delete_streams
from tests.tls_nats import ConfiguredNats
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.reader_batches import sequences_until_raised
from tests.tools.scripted_nats import ScriptedNats

LIMIT = PAYLOAD_BOUND + HEADERS_ALLOWANCE
# What a scripted server writes after the malformed frame's head: just more than the reader would
# ever buffer for one frame, so a reader without a bound would have taken it for a frame's body.
FILLER = LIMIT + 65536


def delivery(consumer_seq: int, payload: bytes = b"{}", header_size: int | None = None) -> bytes:
    """A stored message as nats-server delivers it to a push consumer (stream sequence 10 more
    than the consumer's); ``header_size`` overrides the one the frame declares."""
    reply = f"$JS.ACK.S_EVENTS.c1.1.{consumer_seq + 10}.{consumer_seq}.1700000000000000000.0"
    headers = b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n"
    declared = len(headers) if header_size is None else header_size
    size = len(headers) + len(payload)
    head = f"HMSG s.job.j.lines 1 {reply} {declared} {size}\r\n".encode()
    return head + headers + payload + b"\r\n"


@pytest.fixture
async def jetstream(nats_server_url: str) -> AsyncIterator[tuple[JetStreamContext, Names]]:
    """A JetStream context on the real server and a stream of the test's own, for the reader's
    consumer (its messages go nowhere: the reader reads from the scripted server)."""
    async with jetstream_on(nats_server_url) as made:
        yield made


@contextlib.asynccontextmanager
async def jetstream_on(nats_server_url: str) -> AsyncIterator[tuple[JetStreamContext, Names]]:
    """``jetstream`` on the running loop (a test's own, ``run_on``)."""
    settings = Settings(nats_url=nats_server_url, prefix=f"t{uuid.uuid4().hex[:10]}")
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    try:
        yield js, names
    finally:
        await eventstore.close(nc)
        await delete_streams(nats_server_url, settings.prefix)


async def read_everything_stored(reader: StreamReader) -> list[bytes]:
    """The payloads of every message the stream holds, from its first, the reader closed after."""
    got: list[bytes] = []
    try:
        await reader.open(1)
        async with asyncio.timeout(60):  # a bound on a broken reader only
            async for batch in reader.batches():
                got += [body for _, body in batch]
                if reader.pending == 0:
                    break
    finally:
        await reader.close()
    return got


@pytest.mark.parametrize(
    ("bad", "filler", "reason"),
    [
        (delivery(3, b"{}", header_size=40), 0, "headers larger than the whole message"),
        (b"HMSG _INBOX.x 1 40 12\r\nNATS/1.0 100\r\n\r\n", 0, "headers larger"),
        (b"MSG s.job.j.lines 1 1000000000000000000000000000000\r\n", FILLER, "a size over"),
        (b"MSG s.job.j.lines 1 %d\r\n" % (LIMIT + 1), FILLER, f"a size over the {LIMIT} bytes"),
        (b"MSG s.job.j.lines 1 " + b"9" * 5000 + b"\r\n", FILLER, "a size over"),
        (b"HMSG s.job.j.lines 1 ", FILLER, f"a line over {MAX_LINE} bytes"),
    ],
    ids=["headers", "heartbeat-headers", "huge-size", "limit+1", "5000-digits", "endless-line"],
)
async def test_a_malformed_frame_from_the_server_is_refused_after_the_messages_before_it(
    jetstream: tuple[JetStreamContext, Names], bad: bytes, filler: int, reason: str
) -> None:
    """A server sends two messages, then a frame no NATS server sends (and, for a frame that
    would make the reader wait, goes on sending bytes): the two messages are handed out, then
    the reader fails with "malformed frame from NATS" and why, instead of buffering what comes
    for ever; the caller starts again after the last message."""
    js, names = jetstream
    frames = delivery(1) + delivery(2) + bad
    async with ScriptedNats(frames, then_filler=filler) as server:
        reader = StreamReader(js, [server.url], names.stream, names.all_subjects)
        try:
            await reader.open(1)
            # A bound on a broken reader only: the scripted server sends nothing after its
            # filler, so a reader that kept buffering would end on its 15 s heartbeat wait.
            seqs, error = await asyncio.wait_for(
                sequences_until_raised(reader, StreamReaderError), timeout=120
            )
        finally:
            await reader.close()
    assert seqs == [11, 12]
    assert reader.last_seq == 12
    assert "malformed frame from NATS" in str(error)
    assert reason in str(error)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_server_that_hangs_up_right_after_the_open_is_left_at_the_first_read(
    nats_server_url: str, loop: str
) -> None:
    """A server answers the open's PONG and hangs up at once (its FIN right behind the PONG,
    so it reaches the reader while the open finishes): the first read fails with "NATS closed
    the connection" at once, not with the 15 s silence's "no message nor heartbeat" (as it did
    in session 40's first cut: asyncio's reader had seen the end and kept the socket half-open,
    so nothing told the reads that took over)."""

    async def scenario() -> None:
        async with (
            jetstream_on(nats_server_url) as (js, names),
            ScriptedNats(b"", hang_up=True) as server,
        ):
            reader = StreamReader(js, [server.url], names.stream, names.all_subjects)
            try:
                await reader.open(1)
                seqs, error = await sequences_until_raised(reader, StreamReaderError)
            finally:
                await reader.close()
        assert seqs == []
        assert str(error) == "NATS closed the connection"

    run_on(loop, scenario())


@pytest.mark.parametrize("announced", [10**12, -1, "lots"])
async def test_a_server_announcing_a_max_payload_no_nats_server_has_is_not_read_from(
    jetstream: tuple[JetStreamContext, Names], announced: object
) -> None:
    """A server whose INFO announces a ``max_payload`` no NATS server has (the bound of every
    frame it would send) is left like one that is not NATS, named with why."""
    js, names = jetstream
    async with ScriptedNats(delivery(1), info={"max_payload": announced}) as server:
        reader = StreamReader(js, [server.url], names.stream, names.all_subjects)
        with pytest.raises(StreamReaderError, match="not a NATS server: it announced a max_pay"):
            await reader.open(1)
        await reader.close()


async def test_a_server_whose_info_line_never_ends_within_the_bound_is_not_read_from(
    jetstream: tuple[JetStreamContext, Names],
) -> None:
    """An INFO longer than any line the reader waits for is refused as a malformed frame (the
    socket reader's own limit, 4 MiB, is not waited for), and the server left."""
    js, names = jetstream
    async with ScriptedNats(b"", info={"padding": "x" * MAX_LINE}) as server:
        reader = StreamReader(js, [server.url], names.stream, names.all_subjects)
        with pytest.raises(StreamReaderError, match=f"a line over {MAX_LINE} bytes"):
            await reader.open(1)
        await reader.close()


async def test_a_message_stored_before_max_payload_was_lowered_is_read_whole() -> None:
    """A real nats-server stores a 3 MiB message under a 4 MiB ``max_payload``, then restarts
    on the same store with 1 MiB (an operator lowered it): the message is delivered as stored,
    and read whole with the messages around it; a replay never stops there."""
    with scratch_dir("jobrunner-test-lowered-payload-") as root:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        names = Names(prefix)
        payloads = [b"before", b"L" * (3 << 20), b"after"]
        server = ConfiguredNats(root, f"max_payload: {4 << 20}\n")
        server.start()
        try:
            settings = Settings(nats_url=f"nats://127.0.0.1:{server.port}", prefix=prefix)
            nc = await eventstore.connect(settings, "test")
            js = nc.jetstream()
            await eventstore.ensure_topology(js, names, settings)
            for payload in payloads:
                await js.publish(f"{prefix}.job.j.status", payload)
            await nc.close()
        finally:
            server.stop()
        server = ConfiguredNats(root, f"max_payload: {1 << 20}\n")
        server.start()
        try:
            url = f"nats://127.0.0.1:{server.port}"
            nc = await eventstore.connect(Settings(nats_url=url, prefix=prefix), "test")
            assert nc.max_payload == 1 << 20
            reader = StreamReader(nc.jetstream(), [url], names.stream, names.all_subjects)
            try:
                got = await read_everything_stored(reader)
            finally:
                await nc.close()
            assert got == payloads
        finally:
            server.stop()


async def test_the_reader_reads_a_default_server_as_before(nats_server_url: str) -> None:
    """The shared test server (default ``max_payload``): its messages, the largest a publisher
    may send among them, are read as they were stored."""
    settings = Settings(nats_url=nats_server_url, prefix=f"t{uuid.uuid4().hex[:10]}")
    names = Names(settings.prefix)
    nc = await nats.connect(nats_server_url)
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    largest = b"M" * (nc.max_payload - 200)  # the headers JetStream stores come on top
    payloads = [b"a", largest, b"b"]
    for payload in payloads:
        await js.publish(f"{settings.prefix}.job.j.status", payload)
    reader = StreamReader(js, [nats_server_url], names.stream, names.all_subjects)
    try:
        got = await read_everything_stored(reader)
    finally:
        await nc.close()
        await delete_streams(nats_server_url, settings.prefix)
    assert got == payloads
