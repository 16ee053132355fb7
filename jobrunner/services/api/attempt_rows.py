"""The read-model rows actions decide on: the latest attempts of a batch's jobs, and the latest
attempt of one job. Read-only, as every query of the API."""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg

from jobrunner.common.database import READ_SCHEMA
from jobrunner.services.api.actions import Attempt
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.dependencies import as_stored
from jobrunner.services.api.errors import try_again_later
from jobrunner.services.api.readpool import ReadPool

ATTEMPT_COLUMNS = """
    id, job_type, status, parameters, lock, requested_by, batch_id, batch_index, attempt,
    attempt_of
"""


def attempt_from_row(row: asyncpg.Record) -> Attempt:
    return Attempt(
        id=row["id"],
        job_type=row["job_type"],
        status=row["status"],
        parameters=row["parameters"] or {},
        lock=row["lock"],
        requested_by=row["requested_by"],
        batch_id=row["batch_id"],
        batch_index=row["batch_index"],
        attempt=row["attempt"] or 1,
        attempt_of=row["attempt_of"],
    )


async def latest_attempts(pool: ReadPool, batch_id: str) -> list[Attempt]:
    """The latest attempt of every job of the batch."""
    rows = await pool.fetch(
        f"SELECT {ATTEMPT_COLUMNS} FROM {READ_SCHEMA}.jobs WHERE batch_id = $1 AND latest",
        batch_id,
    )
    return [attempt_from_row(r) for r in rows]


async def roots_of(pool: ReadPool, batch_id: str, job_ids: Sequence[str]) -> dict[str, str]:
    """For each given id that is an attempt of a job of the batch: its first attempt's id."""
    rows = await pool.fetch(
        f"SELECT id, coalesce(attempt_of, id) AS root FROM {READ_SCHEMA}.jobs "
        f"WHERE batch_id = $1 AND id = ANY($2::text[])",
        batch_id,
        list(job_ids),
    )
    return {r["id"]: r["root"] for r in rows}


async def attempt_by_id(pool: ReadPool, job_id: str) -> Attempt | None:
    row = await pool.fetchrow(
        f"SELECT {ATTEMPT_COLUMNS} FROM {READ_SCHEMA}.jobs WHERE id = $1", as_stored(job_id)
    )
    return attempt_from_row(row) if row is not None else None


async def latest_attempt_of(pool: ReadPool, root: str) -> Attempt | None:
    """The latest attempt of the job whose first attempt is ``root``."""
    row = await pool.fetchrow(
        f"SELECT {ATTEMPT_COLUMNS} FROM {READ_SCHEMA}.jobs "
        f"WHERE (id = $1 OR attempt_of = $1) AND latest ORDER BY attempt DESC LIMIT 1",
        root,
    )
    return attempt_from_row(row) if row is not None else None


# How long an action waits for the read models to show every event stored before it: what it
# decides (which jobs are pending, running, ended) must not rest on an older picture.
CATCH_UP_TIMEOUT = 5.0


async def catch_up(ctx: ApiContext, timeout: float | None = None) -> None:
    """Wait until the read models include every event the stream holds now; else 503."""
    info = await ctx.js.stream_info(ctx.names.stream)
    target = info.state.last_seq
    deadline = time.monotonic() + (CATCH_UP_TIMEOUT if timeout is None else timeout)
    applied = 0
    while True:
        if ctx.projection.applied >= target:
            return
        # The projector announces only what it applies: read the checkpoint for an idle one.
        applied = int(
            await ctx.pool.fetchval(f"SELECT last_seq FROM {READ_SCHEMA}.checkpoint") or 0
        )
        if applied >= target:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await ctx.projection.wait_for(target, min(left, 0.25))
    raise try_again_later(
        "READ_MODEL_BEHIND",
        f"The read models are {target - applied} event(s) behind the stream, so this action "
        "cannot see the jobs' current states; try again in a moment.",
        retry_after=2,
        behind=target - applied,
    )
