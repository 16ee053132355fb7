"""One HTTP/1.1 request written byte for byte: header values an HTTP client refuses to send
(a value of only spaces and tabs), as a hand-written client or a proxy may send them."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


async def raw_request(
    base_url: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, Any]:
    """The status and the JSON body of the answer (None when it is not JSON)."""
    address = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address.netloc}", "Connection: close"]
    lines += [f"{name}:{value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        async with asyncio.timeout(30):
            received = await reader.read(-1)  # until the server closes
    finally:
        writer.close()
    head, _, content = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"chunked" in head.lower():
        content = _unchunked(content)
    try:
        return status, json.loads(content)
    except ValueError:
        return status, None


def _unchunked(content: bytes) -> bytes:
    out = b""
    while content:
        size_line, _, content = content.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, content = out + content[:size], content[size + 2 :]
    return out
