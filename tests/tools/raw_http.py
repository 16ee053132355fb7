"""HTTP/1.1 requests written byte for byte: header values an HTTP client refuses to send (a value
of only spaces and tabs, a control byte), as a hand-written client or a proxy may send them, and
bytes that are no valid request at all."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import urlsplit

import msgspec


async def raw_request(
    base_url: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, Any]:
    """The status and the JSON body of the answer (None when it is not JSON)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {urlsplit(base_url).netloc}", "Connection: close"]
    lines += [f"{name}:{value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    answer = await raw_exchange(base_url, request)
    try:
        return answer.status, answer.json()
    except ValueError:
        return answer.status, None


async def open_raw(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the server at ``base_url``, for bytes written as they are."""
    address = urlsplit(base_url)
    return await asyncio.open_connection(address.hostname, address.port)


def _unchunked(content: bytes) -> bytes:
    out = b""
    while content:
        size_line, _, content = content.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, content = out + content[:size], content[size + 2 :]
    return out


class RawAnswer(msgspec.Struct, frozen=True):
    """What a server answered to bytes sent as they are, read until it closed the connection."""

    status: int
    headers: dict[str, str]  # names lower-case; a repeated header's last value
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_exchange(
    base_url: str, data: bytes, *, timeout: float = 30, pieces: int = 1
) -> RawAnswer:
    """Send ``data`` as it is (in ``pieces`` writes, each drained before the next) and read the
    answer until the server closes the connection; TimeoutError when it has not within
    ``timeout`` seconds (a server that hangs)."""
    async with asyncio.timeout(timeout):
        reader, writer = await open_raw(base_url)
        try:
            size = -(-len(data) // pieces)
            for start in range(0, len(data), size):
                writer.write(data[start : start + size])
                await writer.drain()
            received = await read_until_closed(reader)
        finally:
            writer.close()
    return parse_answer(received)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sent until it closed the connection, also when it reset it (it closed
    with what the client sent still unread): what arrived before the reset is kept."""
    received = bytearray()
    try:
        while block := await reader.read(65536):
            received += block
    except ConnectionResetError:
        pass
    return bytes(received)


STATUS_LINE = re.compile(rb"(?:^|\r\n)HTTP/1\.1 \d{3} ")


def status_lines(received: bytes) -> int:
    """How many answers began in what was received: status lines at its start or a line's,
    never "HTTP/1.1 " inside a sentence (MALFORMED_REQUEST's says "not valid HTTP/1.1")."""
    return len(STATUS_LINE.findall(received))


def parse_answer(received: bytes) -> RawAnswer:
    """The first HTTP/1.1 answer of what was received (a connection may carry another after it:
    a request sent while the one before was served is answered once that one's answer is out)."""
    head, separator, body = received.partition(b"\r\n\r\n")
    assert separator, f"no complete answer: {received[:200]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunked(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return RawAnswer(int(status_line.split(" ", 2)[1]), headers, body)
