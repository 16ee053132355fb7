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

from litestar import Litestar

from jobrunner.common import retry
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.api.security.middleware import (
    Access,
    AccessMiddleware,
    StreamLimiter,
    add_security_headers,
)
from jobrunner.services.api.security.openapi import (
    OPENAPI_COMPONENTS,
    OPENAPI_SECURITY,
    CompletedJsonDocument,
    CompletedYamlDocument,
    document_errors,
)
from jobrunner.services.api.security.origin import HostPolicy
from jobrunner.services.api.security.principal import Principal, optional_principal, principal_of
from jobrunner.services.api.security.routes import ROUTES, csrf_token_for
from jobrunner.services.api.security.sessions import SessionSigner
from jobrunner.services.api.security.tokens import Role, TokenStore

__all__ = [
    "MIDDLEWARE",
    "OPENAPI_COMPONENTS",
    "OPENAPI_SECURITY",
    "ROUTES",
    "CompletedJsonDocument",
    "CompletedYamlDocument",
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
        hosts = HostPolicy.from_settings(
            settings.allowed_hosts, settings.host, loopback=is_loopback(settings.host)
        )
        if not settings.auth:
            if not is_loopback(settings.host):
                raise RuntimeError(
                    f"authentication may be switched off only on a loopback address, "
                    f"not {settings.host!r}"
                )
            app.state.access = Access(
                enabled=False, store=None, signer=None, streams=limiter, hosts=hosts
            )
            yield
            return
        ctx = app.state.ctx
        # Waited for, not failed on: the token bucket's stream may not answer yet while a
        # NATS cluster forms or a node is down.
        store = await retry.until_jetstream_ready(
            lambda: TokenStore.open(
                ctx.js,
                Names(settings.prefix),
                settings.stream_replicas,
                retry.start_context(ctx.js),
            ),
            "the token bucket",
        )
        await retry.until_jetstream_ready(store.start_watch, "the token bucket's records")
        key = await retry.until_jetstream_ready(store.session_key, "the session-signing key")
        signer = SessionSigner(key, settings.session_max_age_seconds)
        app.state.access = Access(
            enabled=True, store=store, signer=signer, streams=limiter, hosts=hosts
        )
        try:
            yield
        finally:
            await store.stop_watch()

    return _lifespan
