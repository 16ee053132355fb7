"""Access control for the API and web UI: tokens, roles, scope, sessions, limits.

``create_app`` wires it in with ``MIDDLEWARE``, ``ROUTES``, ``access_lifespan`` and
``before_send``; ``document_errors`` adds the error answers every route can give to the OpenAPI
document. Everything a route needs is ``principal_of(request)`` (see ``principal.py``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme

from contracts.names import Names
from jobrunner.settings import Settings
from services.api.security.middleware import (
    PUBLIC_PATHS,
    Access,
    AccessMiddleware,
    StreamLimiter,
    add_security_headers,
    is_event_stream,
    known_query_parameters,
)
from services.api.security.principal import Principal, optional_principal, principal_of
from services.api.security.routes import ROUTES, csrf_token_for
from services.api.security.sessions import SessionSigner
from services.api.security.tokens import Role, TokenStore

__all__ = [
    "MIDDLEWARE",
    "OPENAPI_COMPONENTS",
    "OPENAPI_SECURITY",
    "ROUTES",
    "Principal",
    "Role",
    "access_lifespan",
    "add_security_headers",
    "csrf_token_for",
    "document_errors",
    "is_loopback",
    "optional_principal",
    "principal_of",
]

MIDDLEWARE = [AccessMiddleware]
OPENAPI_COMPONENTS = Components(
    security_schemes={
        "BearerToken": SecurityScheme(
            type="http",
            scheme="bearer",
            description="An API token (`jobrunner token create`); browsers use a session cookie.",
        )
    }
)
OPENAPI_SECURITY: list[dict[str, list[str]]] = [{"BearerToken": []}]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only ever means this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def access_lifespan(settings: Settings):  # type: ignore[no-untyped-def]
    """Opens the token store (after the main lifespan has connected NATS)."""

    @asynccontextmanager
    async def _lifespan(app: Litestar) -> AsyncIterator[None]:
        limiter = StreamLimiter(per_token=settings.max_streams_per_token)
        if not settings.auth:
            if not is_loopback(settings.host):
                raise RuntimeError(
                    f"authentication may be switched off only on a loopback address, "
                    f"not {settings.host!r}"
                )
            app.state.access = Access(enabled=False, store=None, signer=None, streams=limiter)
            yield
            return
        ctx = app.state.ctx
        store = await TokenStore.open(ctx.js, Names(settings.prefix), settings.stream_replicas)
        await store.start_watch()
        signer = SessionSigner(await store.session_key(), settings.session_max_age_seconds)
        app.state.access = Access(enabled=True, store=store, signer=signer, streams=limiter)
        try:
            yield
        finally:
            await store.stop_watch()

    return _lifespan


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


def _spec(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


def document_errors(app: Litestar) -> None:
    """Add the error answers of the access layer (and the framework) to every operation."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler) or not handler.include_in_schema:
                continue
            responses: dict[int, ResponseSpec] = dict(handler.responses or {})

            def add(status: int, description: str, responses: dict[int, ResponseSpec]) -> None:
                responses.setdefault(status, _spec(description))

            public = any(PUBLIC_PATHS.match(p) for p in handler.paths) or handler.opt.get("public")
            if not public:
                add(401, "No valid token or session (`UNAUTHORIZED`).", responses)
                add(403, "The token's role is too small, or a CSRF check failed.", responses)
            add(400, "Malformed request or unknown query parameter.", responses)
            if any("{" in p for p in handler.paths):
                add(404, "Nothing at this address, or not visible to this token.", responses)
            methods = handler.http_methods
            if methods & {"POST", "PUT", "PATCH"}:
                add(413, "The request body is over the size limit.", responses)
                add(422, "The request body is not valid.", responses)
            if known_query_parameters(handler):
                add(422, "A query parameter is not valid.", responses)
            if is_event_stream(handler):
                add(429, "The token has too many open event streams.", responses)
            add(500, "An unexpected error (logged on the server).", responses)
            handler.responses = responses
