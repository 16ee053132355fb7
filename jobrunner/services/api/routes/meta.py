"""Job types and health."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.response import Response

from jobrunner.common.jobtypes import public_schema
from jobrunner.services.api.dependencies import ctx_of
from jobrunner.services.api.health import report, set_aside_events
from jobrunner.services.api.reads import get


@get("/api/job-types", tags=["job types"], summary="Job types and their parameter schemas")
async def list_job_types(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return [public_schema(t) for t in ctx_of(request).job_types.values()]


@get(
    "/health",
    tags=["health"],
    summary="ok, degraded (200) or unavailable (503), with the problems found",
)
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    body, status_code = await report(ctx_of(request))
    return Response(body, status_code=status_code)


@get(
    "/api/projector/failures",
    tags=["health"],
    summary="Events the projector could not apply and set aside (admins only)",
    opt={"role": "admin"},
)
async def list_projector_failures(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return await set_aside_events(ctx_of(request))
