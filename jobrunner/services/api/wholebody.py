"""A route acts only on a request whose body has arrived whole.

uvicorn starts a route as soon as its request's head is read, while the body may still be on
its way. A route that takes no body (a cancel, a token's revocation, a sign-out) would act at
once; and should the body then prove malformed (a chunk that is not one), the protocol
(``httpprotocol``) answers ``400 MALFORMED_REQUEST``, "nothing was done", while the cancel was
stored: a client trusting the answer might cancel again later, or think the job still runs. So a
request that declares a body has it read whole (and bounded, as every body is) before such a
route runs: a malformed body ends the request before anything is done, and the answer is true.

Routes that take a body read it before they act already: Litestar reads a ``data`` parameter
before calling its handler, the routes that read theirs by hand (``opt["request_body"]``) do so
first, and an artifact's upload (``opt["binary_body"]``) spools it whole before storing any of it
(it is streamed, so it is not read here: its limits are its own, checked as it arrives).
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.handlers import HTTPRouteHandler

# The opt keys of routes that read their body themselves, before acting.
_READS_ITS_BODY = frozenset({"request_body", "binary_body"})


def declares_body(request: Request[Any, Any, Any]) -> bool:
    """Whether the request says a body follows its head (chunked, or a non-zero length)."""
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip("0") != ""


def reads_its_body(handler: HTTPRouteHandler) -> bool:
    """Whether the route reads its request's body itself before it acts."""
    return handler.parsed_data_field is not None or not _READS_ITS_BODY.isdisjoint(handler.opt)


async def read_whole_body(request: Request[Any, Any, Any]) -> None:
    """Litestar ``before_request`` (part of the app's): a declared body read whole before a route
    that does not read it runs. A malformed one raises here (the client is gone; the protocol
    answered 400), a body over the route's limit answers 413 ``BODY_TOO_LARGE``."""
    handler = request.route_handler
    needs_reading = isinstance(handler, HTTPRouteHandler) and not reads_its_body(handler)
    if needs_reading and declares_body(request):
        await request.body()
