"""The OpenAPI document: the bearer scheme, the error answers of every route, request bodies
read by hand."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from jobrunner.services.api.security.middleware import (
    PUBLIC_PATHS,
    is_streaming_response,
    known_query_parameters,
)

OPENAPI_COMPONENTS = Components(
    security_schemes={
        "BearerToken": SecurityScheme(
            type="http",
            scheme="bearer",
            description="An API token (`jobrunner token create`); browsers use a session cookie.",
        ),
        "CallbackToken": SecurityScheme(
            type="http",
            scheme="bearer",
            description="An external job's callback token, from the answer that created the job; "
            "it opens that job's reporting endpoint and nothing else.",
        ),
    }
)
OPENAPI_SECURITY: list[dict[str, list[str]]] = [{"BearerToken": []}]


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


def error_spec(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


def document_errors(app: Litestar) -> None:
    """Add the error answers of the access layer (and the framework) to every operation."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler) or not handler.include_in_schema:
                continue
            responses: dict[int, ResponseSpec] = dict(handler.responses or {})

            def add(status: int, description: str, responses: dict[int, ResponseSpec]) -> None:
                responses.setdefault(status, error_spec(description))

            public = any(PUBLIC_PATHS.match(p) for p in handler.paths) or handler.opt.get("public")
            if public:
                handler.security = [{}]  # no token needed
            elif not handler.opt.get("callback"):  # a callback route documents its own 401
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
            if is_streaming_response(handler):
                add(429, "The token has too many open event streams.", responses)
            add(500, "An unexpected error (logged on the server).", responses)
            handler.responses = responses


# Litestar builds the document at the first request for it and keeps it; completing it at the
# API's start built it there instead: about 0.1 s of CPU at every start (each test's API too)
# for a document few clients ask for. So it is completed where it is rendered. The price: the
# first request for the document blocks the event loop while it is built (about 0.08 s of CPU),
# once per API process.


class CompletedJsonDocument(JsonRenderPlugin):
    """``/api/schema/openapi.json``, request bodies read by hand included."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        complete_openapi(request.app, openapi_schema)
        return super().render(request, openapi_schema)


class CompletedYamlDocument(YamlRenderPlugin):
    """``/api/schema/openapi.yaml``, request bodies read by hand included."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        complete_openapi(request.app, openapi_schema)
        return super().render(request, openapi_schema)


def complete_openapi(app: Litestar, document: dict[str, Any]) -> None:
    """Document the JSON body of handlers that read it themselves (``opt={"request_body": T}``),
    so that clients and fuzzers know what to send. Called at every render of the one document
    Litestar keeps: a body documented already is left as it is."""
    bodies: dict[tuple[str, str], Any] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            body = (
                handler.opt.get("request_body") if isinstance(handler, HTTPRouteHandler) else None
            )
            if body is not None:
                for method in handler.http_methods:
                    bodies[(route.path_format, method.lower())] = body
    if not bodies:
        return
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for (path, method), body in bodies.items():
        operation = document.get("paths", {}).get(path, {}).get(method)
        if operation is None or "requestBody" in operation:
            continue
        (ref,), defs = msgspec.json.schema_components(
            [body], ref_template="#/components/schemas/{name}"
        )
        for name, definition in defs.items():
            components.setdefault(name, definition)
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref}},
        }
