"""ASGI wrappers that act on HTTP requests only.

The lifespan (and any other scope) must reach the application untouched: the API's start and
stop run through it. Every wrapper of the API that times, guards or answers requests passes
those scopes through here, by one rule.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send


class HttpOnly:
    """Wraps ``app``: an HTTP request goes to ``http``, any other scope straight to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
