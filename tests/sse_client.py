"""A small, strict SSE client over a real HTTP connection, for the tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseStream:
    events: list[SseEvent] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


async def iter_events(
    response: httpx.Response, into: SseStream | None = None
) -> AsyncIterator[SseEvent]:
    current = SseEvent()
    has_data = False
    async for line in response.aiter_lines():
        if line == "":
            if has_data:
                yield current
            current, has_data = SseEvent(), False
            continue
        if line.startswith(":"):
            if into is not None:
                into.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            current.data = f"{current.data}\n{value}" if has_data else value
            has_data = True
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "retry" and into is not None:
            into.retry = int(value)


async def read_stream(
    client: httpx.AsyncClient,
    path: str,
    last_event_id: str | bytes | None = None,
    stop_after: int | None = None,
) -> SseStream:
    """Read a stream until the server closes it (or ``stop_after`` events arrived)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out = SseStream()
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in iter_events(response, out):
            out.events.append(event)
            if stop_after is not None and len(out.events) >= stop_after:
                break
    return out
