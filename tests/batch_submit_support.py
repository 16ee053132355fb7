"""Helpers for the batch tests: bodies, the stream's view of a batch, jobs' states."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.subscription import last_message
from jobrunner.contracts.names import Names


def batch_body(*jobs: tuple[str, dict[str, Any]], name: str = "test batch") -> dict[str, Any]:
    return {"batch_name": name, "jobs": [{"job_type": t, "parameters": p} for t, p in jobs]}


@asynccontextmanager
async def jetstream(settings: Settings) -> AsyncIterator[JetStreamContext]:
    nc = await eventstore.connect(settings, "test-batches")
    try:
        yield nc.jetstream()
    finally:
        await eventstore.close(nc)


async def stored_count(settings: Settings, subject: str | None = None) -> int:
    """How many events of this test's prefix (or on ``subject``) the stream holds."""
    names = Names(settings.prefix)
    async with jetstream(settings) as js:
        info = await js.stream_info(names.stream, subjects_filter=subject or names.all_subjects)
        if subject is None:
            return info.state.messages
        return sum((info.state.subjects or {}).values())


async def is_sealed(settings: Settings, batch_id: str) -> bool:
    names = Names(settings.prefix)
    async with jetstream(settings) as js:
        subject = names.batch_kind_subject(batch_id, "sealed")
        return await last_message(js, names.stream, subject) is not None


async def job_rows(settings: Settings, batch_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT * FROM readmodel.jobs WHERE batch_id = $1 ORDER BY created_at, id",
                batch_id,
            )
        )
    finally:
        await conn.close()


async def wait_rows(
    settings: Settings, batch_id: str, count: int, status: str, timeout: float = 60.0
) -> list[asyncpg.Record]:
    """Until the read model holds ``count`` jobs of the batch, all with ``status``."""
    rows: list[asyncpg.Record] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                rows = await job_rows(settings, batch_id)
                if len(rows) == count and all(r["status"] == status for r in rows):
                    return rows
                await asyncio.sleep(0.1)
    except TimeoutError:
        seen = sorted({r["status"] for r in rows})
        raise AssertionError(
            f"{len(rows)} jobs with statuses {seen}, not {count} {status}"
        ) from None


async def post_batch(
    client: httpx.AsyncClient, body: Any, key: str | None = None, path: str = "/api/jobs/batch"
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post(path, json=body, headers=headers)
