"""``get``: a route that answers HEAD as well as GET, as any web server does (``curl -I``).

Litestar serves HEAD only where a route declares it, so every read route is declared with
both methods. A HEAD runs the GET handler (the same checks, status and headers, the
Content-Length of the body it would send); the server sends no body (uvicorn never writes a
HEAD's). Event streams are the exception: their GET never ends, so they stay GET-only routes
(Litestar's ``get``) and a HEAD is answered 405 (Allow: GET, OPTIONS) at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from litestar import Request, Router, route
from litestar.handlers import HTTPRouteHandler
from litestar.types import Method

READ_METHODS: tuple[Method, ...] = ("GET", "HEAD")


def is_head(request: Request[Any, Any, Any]) -> bool:
    """A HEAD: a download then answers its headers with no body to read (the server would
    drop it only after the handler had read it all, from Postgres or the object store)."""
    return request.scope["method"] == "HEAD"


def get(path: str | Sequence[str] | None = None, **kwargs: Any) -> HTTPRouteHandler:
    """Litestar's ``get``, answering HEAD too."""
    return route(path, http_method=list(READ_METHODS), **kwargs)


class ReadRouter(Router):
    """A router whose GET routes answer HEAD too, for the routes Litestar makes itself: the
    OpenAPI plugin's (GET only) and the static files' (a HEAD handler of their own, whose
    answer leaves out Content-Type: Litestar's HEAD responses carry none)."""

    def register(self, value: Any) -> Any:
        if isinstance(value, HTTPRouteHandler):
            if value.http_methods == {"HEAD"}:
                return []  # the GET handler answers HEAD
            if value.http_methods == {"GET"}:
                value.http_methods = set(READ_METHODS)  # made by Litestar for this router alone
        return super().register(value)
