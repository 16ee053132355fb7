"""Every attempt of a job, for the job detail's links between them.

A restart is a new job whose ``attempt_of`` names the first attempt, so one query over the first
attempt's id finds the whole chain; the caller's scope is applied to each row like to any job.
"""

from __future__ import annotations

from typing import Any

import msgspec

from jobrunner.common.database import READ_SCHEMA
from jobrunner.services.api.readpool import ReadPool
from jobrunner.services.api.security.principal import Principal


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    attempt: int
    status: str


async def attempts_of(pool: ReadPool, first_id: str, principal: Principal | None) -> list[Attempt]:
    """The attempts of the job whose first attempt is ``first_id``, oldest first."""
    rows: list[Any] = await pool.fetch(
        f"SELECT id, attempt, status, requested_by FROM {READ_SCHEMA}.jobs"
        " WHERE id = $1 OR attempt_of = $1 ORDER BY attempt, id",
        first_id,
    )
    return [
        Attempt(id=r["id"], attempt=r["attempt"], status=r["status"])
        for r in rows
        if principal is None or principal.can_see(r)
    ]
