"""The stream reader's parser fed as asyncio's transport feeds it: bytes written into the buffer
``get_buffer`` offers, ``buffer_updated`` told, reading paused and resumed by the buffer."""

from __future__ import annotations

from jobrunner.common.receivebuffer import ReceiveBuffer
from jobrunner.common.streamreader import StreamReader


class RecordingTransport:
    """What the reader writes (PONG, flow-control answers), and whether it reads."""

    def __init__(self) -> None:
        self.sent = b""
        self.reading = True

    def write(self, data: bytes) -> None:
        self.sent += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def parser(skip: bytes | None = None) -> StreamReader:
    reader = StreamReader(
        None,  # type: ignore[arg-type]
        [],
        "S_EVENTS",
        "s.job.>",
        skip_subject_suffix=skip,
    )
    reader._received = ReceiveBuffer()
    reader._received.connection_made(RecordingTransport())  # type: ignore[arg-type]
    return reader


def sent(reader: StreamReader) -> bytes:
    assert reader._received is not None
    transport = reader._received.transport
    assert isinstance(transport, RecordingTransport)
    return transport.sent


def receive(reader: StreamReader, data: bytes) -> list[tuple[int, bytes]]:
    """``data`` arrives (in as many socket reads as the buffer's room takes); the messages the
    reader parses meanwhile and after, as its consumer would get them. While the buffer has
    paused reading, nothing more arrives until the parser has made room."""
    received = reader._received
    assert received is not None
    transport = received.transport
    assert isinstance(transport, RecordingTransport)
    out: list[tuple[int, bytes]] = []
    left = memoryview(data)
    while left:
        if not transport.reading:
            out += reader._parse()
            assert transport.reading, "parsing made no room"
        room = received.get_buffer(-1)
        assert len(room) > 0
        n = min(len(room), len(left))
        room[:n] = left[:n]
        del room
        received.buffer_updated(n)
        left = left[n:]
    return out + reader._parse()


def unparsed(reader: StreamReader) -> bytes:
    received = reader._received
    assert received is not None
    return bytes(received.buffer[received.start : received.end])
