"""The OpenAPI document a client downloads documents the request bodies the API reads by hand.

The API completes Litestar's document where it renders it (not at its start): these tests hold
that every address of the document carries those bodies, whichever is asked for first."""

from __future__ import annotations

import json
from typing import Any

import yaml
from litestar.handlers import HTTPRouteHandler

from jobrunner.services.api.app import create_app
from tests.system import System

DOCUMENTS = {
    "/api/schema": json.loads,
    "/api/schema/openapi.json": json.loads,
    "/api/schema/openapi.yaml": yaml.safe_load,
    "/api/schema/openapi.yml": yaml.safe_load,
}


def hand_read_bodies(system: System) -> dict[tuple[str, str], str]:
    """The type each route's handler reads its JSON body as by hand (``opt={"request_body": T}``),
    as the app's own handlers declare it."""
    bodies = {}
    for route in create_app(system.settings).routes:
        for handler in getattr(route, "route_handlers", []):
            if isinstance(handler, HTTPRouteHandler) and "request_body" in handler.opt:
                for method in handler.http_methods:
                    bodies[(route.path_format, method.lower())] = handler.opt["request_body"]
    return {route: body.__name__ for route, body in bodies.items()}


def documented_bodies(document: dict[str, Any], routes: Any) -> dict[tuple[str, str], str]:
    """The component each of these routes' request body refers to, as the document says."""
    found = {}
    for path, method in routes:
        body = document["paths"][path][method].get("requestBody", {})
        ref = body.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        found[(path, method)] = (ref or "").rpartition("/")[2]
    return found


async def test_every_address_of_the_document_names_the_bodies_read_by_hand(
    system: System,
) -> None:
    """/api/schema, openapi.json, openapi.yaml and openapi.yml all say what to send to each
    route that reads its body by hand, and define the schemas they refer to."""
    expected = hand_read_bodies(system)
    assert expected[("/api/jobs", "post")] == "CreateJob"  # the walk finds them
    async with system.client() as client:
        for address, parse in DOCUMENTS.items():
            response = await client.get(address)
            assert response.status_code == 200, address
            document = parse(response.text)
            assert documented_bodies(document, expected) == expected, address
            assert set(expected.values()) <= set(document["components"]["schemas"]), address


async def test_a_fresh_api_asked_for_yaml_first_serves_the_same_json(system: System) -> None:
    """Whether the JSON or the YAML document is asked for first, the JSON is the same."""
    async with system.client() as client:
        json_first = (await client.get("/api/schema/openapi.json")).json()
    await system.stop_api()
    await system.start_api()  # a new app, its document not built yet
    async with system.client() as client:
        yaml_first = yaml.safe_load((await client.get("/api/schema/openapi.yaml")).text)
        then_json = (await client.get("/api/schema/openapi.json")).json()
    assert then_json == json_first
    assert yaml_first == json_first
