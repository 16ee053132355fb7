"""Request metrics: how long each route takes to answer, and how many event streams are open.

An ASGI middleware outside access control, so refusals (401, 403, 429) are timed too. The
``route`` label is the route's template (``/api/jobs/{job_id:str}``), never the raw path: one
series per route whatever ids clients send. Requests that match no route (404, 405) never reach a
route's middleware: ``time_unmatched`` wraps the application's own handler to time those under
the one label ``route="unmatched"``, so a scan of made-up paths shows without a series per path.
An event stream is not timed (it lasts as long as its client stays, which says nothing about the
API's speed and would swamp the histogram's buckets); it counts in ``jobrunner_sse_clients``
while it is open, by the name of its route's handler (``job_event_stream``, ``job_updates``, ...).
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Litestar
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Send

from jobrunner.common import metrics
from jobrunner.services.api.httponly import HttpOnly
from jobrunner.services.api.security.middleware import is_streaming_response


class RequestMetrics(HttpOnly):
    async def http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        handler: Any = scope.get("route_handler")
        if is_streaming_response(handler):
            clients = metrics.SSE_CLIENTS.labels(handler.handler_name)
            clients.inc()
            try:
                await self.app(scope, receive, send)
            finally:
                clients.dec()
            return
        await _timed(self.app, scope, receive, send)


class UnmatchedRequests(HttpOnly):
    """The application's handler, timing the requests its router refuses (no route matched)."""

    async def http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        await _timed(self.app, scope, receive, send, only_unmatched=True)


def time_unmatched(app: Litestar) -> None:
    """Time ``app``'s requests that match no route, as ``route="unmatched"``."""
    app.asgi_handler = UnmatchedRequests(app.asgi_handler)


async def _timed(
    app: ASGIApp, scope: HTTPScope, receive: Receive, send: Send, only_unmatched: bool = False
) -> None:
    status = 500  # what the client gets when nothing was sent (the server answers 500)

    async def send_status(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    started = time.perf_counter()
    try:
        await app(scope, receive, send_status)
    finally:
        # The router names the matched route in the scope; a matched one is timed by
        # RequestMetrics (or is an event stream) and must not count twice.
        matched = "route_handler" in scope
        if not (only_unmatched and matched):
            metrics.HTTP_DURATION.labels(
                scope["method"], scope.get("path_template") or "unmatched", str(status)
            ).observe(time.perf_counter() - started)
