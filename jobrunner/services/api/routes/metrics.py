"""``GET /metrics``: every service's metrics in the Prometheus text format (README "Metrics").

Behind a token like every other route (a ``viewer`` is enough). The counts are everyone's jobs,
so a token limited to its own jobs is refused. Reading the peers has a deadline
(``metrics_peer_timeout_seconds``) and nothing here asks NATS or Postgres: the answer comes even
while either is down.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.response import Response
from prometheus_client import CONTENT_TYPE_LATEST

from jobrunner.common.metricsconfig import parse_peers
from jobrunner.common.metricsexposition import render
from jobrunner.services.api.dependencies import ctx_of
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.reads import get
from jobrunner.services.api.security import principal_of


@get(
    "/metrics",
    tags=["health"],
    summary="Metrics of every service in the Prometheus text format (viewer role)",
    media_type=CONTENT_TYPE_LATEST,
    include_in_schema=True,
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    principal = principal_of(request)
    if principal.own_jobs_only:
        raise ApiError(
            403,
            "FORBIDDEN",
            f"Metrics count every user's jobs; the token {principal.name!r} sees only its own.",
        )
    ctx = ctx_of(request)
    families = await ctx.peer_metrics.all_families("api", parse_peers(ctx.settings.metrics_peers))
    return Response(render(families), media_type=CONTENT_TYPE_LATEST)
