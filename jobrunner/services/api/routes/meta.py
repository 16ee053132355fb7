"""Job types and health."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Response

from jobrunner.common.jobtypes import public_schema
from jobrunner.services.api.dependencies import ctx_of


@get("/api/job-types", tags=["job types"], summary="Job types and their parameter schemas")
async def list_job_types(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return [public_schema(t) for t in ctx_of(request).job_types.values()]


@get("/health", tags=["health"], summary="Liveness and the projector's lag")
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    ctx = ctx_of(request)
    checks: dict[str, Any] = {"nats": ctx.nc.is_connected}
    try:
        applied = await ctx.pool.fetchval("SELECT last_seq FROM readmodel.checkpoint")
        checks["postgres"] = True
    except Exception:
        applied = None
        checks["postgres"] = False
    try:
        info = await ctx.js.stream_info(ctx.names.stream)
        last = info.state.last_seq
    except Exception:
        last = None
    lag = last - applied if last is not None and applied is not None else None
    ok = checks["nats"] and checks["postgres"]
    return Response(
        {
            "status": "ok" if ok else "degraded",
            **checks,
            "stream_last_seq": last,
            "projected_seq": applied,
            "projector_lag": lag,
        },
        status_code=200 if ok else 503,
    )
