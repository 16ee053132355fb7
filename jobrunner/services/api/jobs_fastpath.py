"""``GET /api/jobs`` and ``GET /api/jobs/{job_id}/logs`` answered in front of Litestar's router:
the most frequent reads (the web UI's list and log pages, scripts polling them) without the
framework's per-request machinery.

Through Litestar a list request spent about as much of the API's CPU in the framework (the
middleware stack and its send wrappers, the route's signature model parsing ten query parameters
the handler reads again itself, the request and response objects) as in its query. This ASGI
wrapper answers the plain case itself: the route Litestar's own router finds for the path, the
same checks as the access middleware and the read-model gate, the same page (``PAGES``: the
functions the route handlers answer with), the same bytes and headers, timed in the same request
metric. Every other request goes to Litestar untouched, and so does one of these the fast path
does not accept outright: a refused host, no or a bad credential, a role too small, a query it
rejects (``Query`` with the route's own parameter list, as the handler does), read models of
another version, a job not found, any error but a read's failure the table answers
(``errors.READ_FAILURES``) or another Postgres error (answered here, through the same table as
Litestar's handlers, ``errors.read_failure``, the latter a 500: Litestar would run the same
read again, its gate answering from the same flag as the fast path's). Litestar then
runs its own checks and answers as it always did (its refusals and error bodies); such a
request pays its checks, and a 404 its query, twice, the rare case. Nothing is sent before
the page is encoded, so handing a request over is always possible.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import msgspec
import structlog
from litestar._asgi.utils import is_valid_host
from litestar.connection import ASGIConnection
from litestar.datastructures import MultiDict
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.utils import normalize_path

from jobrunner.common import metrics
from jobrunner.services.api import errors
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.routes.jobs import job_page
from jobrunner.services.api.routes.logs import log_page
from jobrunner.services.api.security import Role
from jobrunner.services.api.security.middleware import Access
from jobrunner.services.api.security.origin import check_host_header

log = structlog.get_logger()

# By the route's template (what Litestar's router answers for a path, and the request metric's
# label): the page of a GET of that route, given the query, the caller and the path's parameters.
Page = Callable[[Any, MultiDict[str], Any, dict[str, Any]], Awaitable[msgspec.Struct]]
PAGES: dict[str, Page] = {
    "/api/jobs": lambda ctx, query, principal, _: job_page(ctx, query, principal),
    "/api/jobs/{job_id}/logs": lambda ctx, query, principal, path: log_page(
        ctx, query, principal, path["job_id"]
    ),
}
PREFIX = "/api/jobs"
_ENCODER = msgspec.json.Encoder()


class JobReadsFastPath:
    """Wraps the application's ASGI handler (``install``); see the module docstring."""

    def __init__(self, handler: ASGIApp) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != ScopeType.HTTP
            or scope["method"] != "GET"
            or not scope["path"].startswith(PREFIX)
            or scope.get("root_path")
        ):
            await self.handler(scope, receive, send)
            return
        started = time.perf_counter()
        answer = await self.page(scope, receive)
        if answer is None:
            await self.handler(scope, receive, send)
            return
        template, status, body, headers = answer
        # ``send`` is Litestar's, wrapped with the before-send hook: the browser protections
        # are added to these headers as to every response.
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
        metrics.HTTP_DURATION.labels("GET", template, str(status)).observe(
            time.perf_counter() - started
        )

    async def page(
        self, scope: Scope, receive: Receive
    ) -> tuple[str, int, bytes, list[tuple[bytes, bytes]]] | None:
        """The route's template, the status, the encoded page and further headers, or None:
        Litestar answers this request."""
        app: Any = scope["litestar_app"]
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope, receive=receive)
        try:
            host, authorization = _host_and_authorization(scope["headers"])
            if host is not None and not is_valid_host(host):
                return None  # the router's own host check (a 400)
            # Litestar's router, as it would route the request (its look-up is cached).
            _, _, _, path_params, template = app.asgi_router.handle_routing(
                path=normalize_path(scope["path"]), method="GET"
            )
            answer = PAGES.get(template)
            if answer is None:
                return None
            access: Access = app.state.access
            check_host_header("" if host is None else host.decode("latin-1"), access.hosts)
            if authorization is not None and access.enabled:
                principal = await access.bearer_principal(authorization.decode("latin-1"))
            else:  # a session cookie, or authentication switched off
                principal = await access.principal_from(connection)
            if not principal.has_role(Role.VIEWER):  # what a GET needs (security/middleware.py)
                return None
            ctx = app.state.ctx
            if not ctx.readmodels.serving:  # the gate (readmodelgate.refuse_unready)
                return None
            try:
                page = await answer(ctx, connection.query_params, principal, path_params)
            except Exception as exc:
                # A read that failed in or on the way to Postgres is answered here, as
                # Litestar's handler would answer it (the same table: errors.READ_FAILURES):
                # handed over, the same read would run again, a lock_timeout's or a
                # statement_timeout's costing the client the wait twice, an operator's cancel
                # or termination retried unasked, a connection refused for lack of slots
                # asked for again at once.
                refused = errors.read_failure(scope["path"], exc)
                if refused is None:
                    if not isinstance(exc, asyncpg.PostgresError):
                        raise  # not Postgres's: Litestar's path reports it
                    # One no retry mends (an internal error, a table missing): the 500
                    # Litestar's handler would give after running the read a second time.
                    refused = errors.internal_error(scope["path"], exc)
                body = _ENCODER.encode(refused.body())
                return template, refused.status, body, refused.raw_headers()
            return template, 200, _ENCODER.encode(page), []
        except ApiError:
            return None  # a refusal: Litestar's path refuses it the same way and answers it
        except Exception as exc:  # a route not found, Postgres away: Litestar's path reports it
            log.debug("fast path handed over", error=repr(exc))
            return None


def _host_and_authorization(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[bytes | None, bytes | None]:
    """The first ``Host`` and ``Authorization`` header of a request, raw: what the checks read
    of every list request. Litestar's ``Headers`` decode and index all of them first (4 of
    the fast path's 10 µs before its query, at load 15)."""
    host = authorization = None
    for name, value in headers:
        name = name.lower()
        if name == b"host":
            if host is None:
                host = value
        elif name == b"authorization" and authorization is None:
            authorization = value
    return host, authorization


def install(app: Any) -> None:
    """Put the fast path in front of ``app``'s ASGI handler (after Litestar's own wrappers)."""
    app.asgi_handler = JobReadsFastPath(app.asgi_handler)
