"""The OpenAPI document a client downloads documents the request bodies the API reads by hand.

The API completes Litestar's document where it renders it (not at its start): these tests hold
that both documents a client can ask for carry those bodies, every time they are asked for."""

from __future__ import annotations

from typing import Any

import yaml

from tests.system import System

# Routes whose handlers read their JSON body themselves (opt={"request_body": ...}).
HAND_READ_BODIES = {
    ("/api/jobs", "post"): "CreateJob",
    ("/api/batches", "post"): "CreateBatch",
    ("/api/tokens", "post"): "CreateToken",
}


def documented_bodies(document: dict[str, Any]) -> dict[tuple[str, str], str]:
    """The component each hand-read route's request body refers to, as the document says."""
    found = {}
    for path, method in HAND_READ_BODIES:
        body = document["paths"][path][method].get("requestBody", {})
        ref = body.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        found[(path, method)] = (ref or "").rpartition("/")[2]
    return found


async def test_json_and_yaml_documents_name_the_bodies_read_by_hand(system: System) -> None:
    """openapi.json and openapi.yaml both say what to send to POST /api/jobs, /api/batches and
    /api/tokens, and define the schemas they refer to."""
    async with system.client() as client:
        as_json = (await client.get("/api/schema/openapi.json")).json()
        as_yaml = yaml.safe_load((await client.get("/api/schema/openapi.yaml")).text)
    for document in (as_json, as_yaml):
        assert documented_bodies(document) == HAND_READ_BODIES
        assert set(HAND_READ_BODIES.values()) <= set(document["components"]["schemas"])


async def test_the_document_is_the_same_each_time_it_is_asked_for(system: System) -> None:
    """Asked for again, the document is byte for byte the first one (no body added twice)."""
    async with system.client() as client:
        first = await client.get("/api/schema/openapi.json")
        again = await client.get("/api/schema/openapi.json")
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
