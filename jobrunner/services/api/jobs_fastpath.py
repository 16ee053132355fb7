"""``GET /api/jobs`` answered in front of Litestar's router: the most frequent read (the web UI's
list, scripts polling it) without the framework's per-request machinery.

Through Litestar a list request spent about as much of the API's CPU in the framework (the
middleware stack and its send wrappers, the route's signature model parsing ten query parameters
the handler reads again itself, the request and response objects) as in its query. This ASGI
wrapper answers the plain case itself: the same checks as the access middleware and the
read-model gate, the same page (``routes.jobs.job_page``), the same bytes and headers, timed in
the same request metric. Every other request goes to Litestar untouched, and so does a list
request the fast path does not accept outright: a refused host, no or a bad credential, a role
too small, a query it rejects, read models of another version, any error. Litestar then runs
its own checks and answers as it always did (its refusals and error bodies). Nothing is sent
before the page is encoded, so handing a request over is always possible.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import structlog
from litestar.connection import ASGIConnection
from litestar.types import ASGIApp, Receive, Scope, Send

from jobrunner.common import metrics
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.routes.jobs import job_page
from jobrunner.services.api.security import Role
from jobrunner.services.api.security.middleware import Access
from jobrunner.services.api.security.origin import check_host

log = structlog.get_logger()

PATH = "/api/jobs"
_ENCODER = msgspec.json.Encoder()


class JobListFastPath:
    """Wraps the application's ASGI handler (``install``); see the module docstring."""

    def __init__(self, handler: ASGIApp) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "GET":
            await self.handler(scope, receive, send)
            return
        started = time.perf_counter()
        body = await self.page(scope, receive)
        if body is None:
            await self.handler(scope, receive, send)
            return
        # ``send`` is Litestar's, wrapped with the before-send hook: the browser protections
        # are added to these headers as to every response.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
        metrics.HTTP_DURATION.labels("GET", PATH, "200").observe(time.perf_counter() - started)

    async def page(self, scope: Scope, receive: Receive) -> bytes | None:
        """The encoded page, or None: Litestar answers this request."""
        app: Any = scope["litestar_app"]
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope, receive=receive)
        try:
            access: Access = app.state.access
            check_host(connection, access.hosts)
            principal = await access.principal_from(connection)
            if not principal.has_role(Role.VIEWER):  # what a GET needs (security/middleware.py)
                return None
            ctx = app.state.ctx
            if not ctx.readmodels.state.current:  # the gate (readmodelgate.refuse_unready)
                return None
            return _ENCODER.encode(await job_page(ctx, connection.query_params, principal))
        except ApiError:
            return None  # a refusal: Litestar's path refuses it the same way and answers it
        except Exception as exc:  # Postgres away, say: Litestar's path reports it
            log.debug("job list fast path handed over", error=repr(exc))
            return None


def install(app: Any) -> None:
    """Put the fast path in front of ``app``'s ASGI handler (after Litestar's own wrappers)."""
    app.asgi_handler = JobListFastPath(app.asgi_handler)
