"""A tiny HTTP server that answers each request with the next of its scripted answers: a status
and a body written in pieces (chunked, a chunk's size line and data split as the script says),
then the response's end and the connection closed. It records every request's headers.

For the bench's SSE clients (bench/tools/sseclients.c, bench/sse.py): a crafted stream with
gaps, duplicates, frames split mid-field across chunks and reads, an end without ``done``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Answer:
    """One response: ``pieces`` are raw bytes written one after another (already chunk-coded:
    see ``chunked``), each flushed alone with a pause so that the client reads them apart."""

    status: int = 200
    pieces: Sequence[bytes] = ()
    chunked: bool = True
    hold: bool = False  # after the pieces, keep the response open until the server stops


@dataclass
class ScriptedSse:
    answers: list[Answer]
    requests: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> ScriptedSse:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._stopping.set()
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            lines = head.split("\r\n")
            headers = {"request-line": lines[0]}
            for line in lines[1:]:
                name, _, value = line.partition(": ")
                if name:
                    headers[name.lower()] = value
            self.requests.append(headers)
            answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
            coding = b"Transfer-Encoding: chunked\r\n" if answer.chunked else b""
            writer.write(
                b"HTTP/1.1 %d Scripted\r\nContent-Type: text/event-stream\r\n%b\r\n"
                % (answer.status, coding)
            )
            for piece in answer.pieces:
                writer.write(piece)
                await writer.drain()
                # Not a timing assertion: a pause so that the pieces arrive in reads of their own
                # (TCP_NODELAY on both ends), as a slow network splits them.
                await asyncio.sleep(0.01)
            if answer.hold:
                await self._stopping.wait()
            if answer.chunked:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def line_frame(seq: int, stream_seq: int, stamp: float | None = None) -> bytes:
    """A job's line as the API frames it (jobrunner/services/api/sse.py line_frames), its text
    stamped with ``t=<monotonic>`` as the bench's paced tool prints it."""
    when = time.monotonic() if stamp is None else stamp
    return (
        b'id: %d:0\ndata: {"seq":%d,"stream":"stdout","level":"info",'
        b'"timestamp":"2026-12-04T18:00:00Z","text":"INFO t=%.6f line %d"}\n\n'
        % (stream_seq, seq, when, seq)
    )


DONE = b'event: done\ndata: {"status":"completed","exit_code":0}\n\n'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at these offsets."""
    out, at = [], 0
    for cut in sorted(cuts):
        out.append(data[at:cut])
        at = cut
    out.append(data[at:])
    return [piece for piece in out if piece]
