"""``GET /health`` as a test reads it: the body with its HTTP status, and its problems' codes."""

from __future__ import annotations

from typing import Any

from tests.system import System


async def health(system: System) -> dict[str, Any]:
    """The report, with the answer's status as ``http_status`` (asked without a token)."""
    async with system.client(token=None) as client:
        response = await client.get("/health")
    body: dict[str, Any] = response.json()
    body["http_status"] = response.status_code
    return body


async def status_and_report(system: System) -> tuple[int, dict[str, Any]]:
    """The answer's HTTP status and the report (asked without a token)."""
    async with system.client(token=None) as client:
        response = await client.get("/health")
    return response.status_code, response.json()


def codes(body: dict[str, Any]) -> list[str]:
    return [p["code"] for p in body["problems"]]
