"""What route handlers need from the running API: its context, and a job or batch the caller may
see.

Route modules import these from here, never from each other; the parts themselves are built
once in the lifespan (``context.lifespan``)."""

from __future__ import annotations

from typing import Any

from litestar import Request

from jobrunner.services.api import batch_readmodels, readmodels
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.errors import batch_not_found, job_not_found
from jobrunner.services.api.security import Principal


def ctx_of(request: Request[Any, Any, Any]) -> ApiContext:
    """The clients and settings the lifespan built."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


def as_stored(name: str) -> str:
    """An id from a request as the read models store it: Postgres text cannot hold NUL, so the
    projector stores it as U+2400 (``projector/storable.py``); looking up the raw id would fail."""
    return name.replace("\x00", "\u2400")


async def find_job(ctx: ApiContext, job_id: str, principal: Principal | None = None) -> Any:
    """The job's row; 404 when it does not exist or ``principal`` may not see it."""
    row = await readmodels.get_job_row(ctx.pool, as_stored(job_id))
    if row is None or (principal is not None and not principal.can_see(row)):
        raise job_not_found(job_id)
    return row


async def find_batch(ctx: ApiContext, batch_id: str, principal: Principal | None = None) -> Any:
    """The batch's row; 404 when it does not exist or ``principal`` may not see it (a token
    limited to its own jobs sees the batches it requested)."""
    row = await batch_readmodels.get_batch_row(ctx.pool, as_stored(batch_id))
    if row is None or (principal is not None and not principal.can_see(row)):
        raise batch_not_found(batch_id)
    return row
