"""An SSE stream's chunks written straight to the client's connection, below the framework.

Broadcasting a job's lines to a thousand viewers is a thousand writes per batch, and the API's
CPU while it streams is mostly those writes. Through the framework each write wakes the
client's task, resumes its async generator, and goes through Litestar's stream and the ASGI
send wrappers before uvicorn frames it; written by the feed itself at hand-over, straight to
the connection's transport, it is one framed ``transport.write`` (``sse.job_stream`` offers
its writer to the feed only while it waits with nothing unsent, so the two paths never
overlap and the order of frames holds).

This reaches below ASGI into uvicorn's httptools protocol (its send is the bound method of the
request's ``RequestResponseCycle``, which holds the transport and its flow control). Whenever
that is not what serves the request (another server, uvicorn's h11 protocol), or the
connection cannot take a write at once (its transport paused by flow control, closing, the
client gone), there is no writer or it declines, and the stream writes through the framework as
before: a client that stops reading is then paused and cut by the same rules.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.types import Scope

try:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
except ImportError:  # no httptools, or a uvicorn that moved it: every stream uses the framework
    RequestResponseCycle = None  # type: ignore[assignment,misc]

# Where ``App`` keeps the server's own send in an HTTP request's scope.
SERVER_SEND = "jobrunner.server_send"


class App(Litestar):
    """Litestar, keeping the server's send in the scope before Litestar wraps it."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def http_chunk(body: bytes) -> bytes:
    """``body`` as one chunk of a chunked response, framed as uvicorn's httptools protocol
    frames it (``<size in hex>\\r\\n<body>\\r\\n``). An empty body is refused (ValueError):
    its chunk would end the response. A feed frames each batch once, and every viewer it
    writes the batch to straight gets the same bytes object (before, each viewer's write
    joined the batch's items and framed them again: two copies of the batch a viewer)."""
    if not body:
        # Callers skip an empty body; one that does not would end the viewer's stream silently.
        raise ValueError("an empty HTTP chunk would end the response")
    return b"%x\r\n%b\r\n" % (len(body), body)


class ChunkWriter:
    """Writes chunks (``http_chunk``) of a started chunked response, or declines."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle

    @property
    def gone(self) -> bool:
        """The connection is lost or closing: a write through the framework would reach a
        transport that only logs ``socket.send() raised exception.`` (uvicorn marks the cycle
        disconnected only a loop turn after the failed send), so the stream ends instead."""
        cycle = self._cycle
        return bool(cycle.disconnected or cycle.transport.is_closing())

    def write(self, chunk: bytes) -> bool:
        """Write ``chunk`` (``http_chunk``'s) now; False, having written nothing, when the
        connection cannot take it at once: the caller sends its body through the framework."""
        cycle = self._cycle
        if (
            cycle.disconnected
            or cycle.response_complete
            or not cycle.response_started
            or cycle.chunked_encoding is not True
            or cycle.flow.write_paused
            or cycle.transport.is_closing()
        ):
            return False
        cycle.transport.write(chunk)
        return True


# What ``ChunkWriter.write`` reads of uvicorn's cycle: a uvicorn without any of them gets no
# writer rather than an error in the middle of a broadcast.
CYCLE_ATTRIBUTES = (
    "disconnected",
    "response_complete",
    "response_started",
    "chunked_encoding",
    "flow",
    "transport",
)


def chunk_writer(scope: Scope) -> ChunkWriter | None:
    """The request's ``ChunkWriter``, or None when uvicorn's httptools protocol, as this module
    knows it, does not serve it (or it is a HEAD, whose body uvicorn never writes)."""
    cycle = getattr(scope.get(SERVER_SEND), "__self__", None)
    if (
        RequestResponseCycle is None
        or type(cycle) is not RequestResponseCycle
        or scope.get("method") == "HEAD"
        or not all(hasattr(cycle, name) for name in CYCLE_ATTRIBUTES)
        or not hasattr(cycle.flow, "write_paused")
    ):
        return None
    return ChunkWriter(cycle)
