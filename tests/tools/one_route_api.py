"""An in-process API of one route with the API's own error handlers, and no servers: what a
client is answered when the route (or what runs before it) refuses."""

from __future__ import annotations

import httpx
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.testing import AsyncTestClient

from jobrunner.services.api.errors import EXCEPTION_HANDLERS


async def answer_to_get(route: HTTPRouteHandler) -> httpx.Response:
    """The answer to a GET of ``route``'s (first) path."""
    app = Litestar([route], exception_handlers=EXCEPTION_HANDLERS)
    async with AsyncTestClient(app) as client:
        return await client.get(next(iter(route.paths)))
