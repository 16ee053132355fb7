"""Batches for tests of the batch actions: submitted through the API, and read back from the
read models."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import httpx

from jobrunner.common import database
from jobrunner.common.settings import Settings

TERMINAL = ("completed", "failed", "cancelled")


async def submit_batch(
    client: httpx.AsyncClient,
    jobs: Sequence[tuple[str, dict[str, Any]]],
    name: str = "test batch",
) -> tuple[str, list[str]]:
    """Submit a batch of ``(job_type, parameters)`` through ``POST /api/jobs/batch`` (as the
    client's token); its id and its job ids in batch order."""
    response = await client.post(
        "/api/jobs/batch",
        json={
            "batch_name": name,
            "jobs": [{"job_type": t, "parameters": p} for t, p in jobs],
        },
        timeout=120,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["batch_id"], body["job_ids"]


async def submit_through(
    make_client: Callable[[], httpx.AsyncClient],
    jobs: Sequence[tuple[str, dict[str, Any]]],
    name: str = "test batch",
) -> tuple[str, list[str]]:
    """``submit_batch`` with a client of its own (``system.client``, ``cluster.client``)."""
    async with make_client() as client:
        return await submit_batch(client, jobs, name)


class ReadModel:
    """The batch rows and job rows as the projector wrote them."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.database_url
        self.pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> ReadModel:
        self.pool = await database.create_pool(self.url, min_size=1, max_size=2)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.pool is not None
        await self.pool.close()

    async def batch(self, batch_id: str) -> dict[str, Any]:
        assert self.pool is not None
        row = await self.pool.fetchrow(
            f"SELECT * FROM {database.READ_SCHEMA}.batches WHERE id = $1", batch_id
        )
        return dict(row) if row is not None else {}

    async def jobs(self, batch_id: str, latest_only: bool = True) -> list[dict[str, Any]]:
        assert self.pool is not None
        rows = await self.pool.fetch(
            f"SELECT * FROM {database.READ_SCHEMA}.jobs WHERE batch_id = $1"
            + (" AND latest" if latest_only else "")
            + " ORDER BY batch_index, attempt",
            batch_id,
        )
        return [dict(r) for r in rows]

    async def snapshot(self, batch_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The batch row and its latest attempts as of one moment (one snapshot), so counters
        and jobs are compared as the projector committed them together."""
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            batch = await conn.fetchrow(
                f"SELECT * FROM {database.READ_SCHEMA}.batches WHERE id = $1", batch_id
            )
            jobs = await conn.fetch(
                f"SELECT * FROM {database.READ_SCHEMA}.jobs WHERE batch_id = $1 AND latest "
                "ORDER BY batch_index, attempt",
                batch_id,
            )
        return (dict(batch) if batch is not None else {}), [dict(r) for r in jobs]

    async def job(self, job_id: str) -> dict[str, Any]:
        assert self.pool is not None
        row = await self.pool.fetchrow(
            f"SELECT * FROM {database.READ_SCHEMA}.jobs WHERE id = $1", job_id
        )
        return dict(row) if row is not None else {}

    async def wait_batch(
        self,
        batch_id: str,
        condition: Callable[[dict[str, Any], list[dict[str, Any]]], bool],
        timeout: float = 60.0,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Poll the batch and its latest attempts until ``condition(batch, jobs)`` holds."""
        batch: dict[str, Any] = {}
        jobs: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    batch, jobs = await self.snapshot(batch_id)
                    if batch and condition(batch, jobs):
                        return batch, jobs
                    await asyncio.sleep(0.05)
        except TimeoutError:
            states = [(j["batch_index"], j["attempt"], j["status"]) for j in jobs]
            raise AssertionError(
                f"batch {batch_id} never got there; last seen: {batch.get('status')} {states}"
            ) from None

    async def wait_ended(
        self, batch_id: str, total: int, timeout: float = 60.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Until every job's latest attempt has ended (and the batch shows ``total`` jobs)."""
        return await self.wait_batch(
            batch_id,
            lambda b, js: len(js) == total and all(j["status"] in TERMINAL for j in js),
            timeout,
        )


def counters(batch: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (
        batch["pending_jobs"],
        batch["processing_jobs"],
        batch["completed_jobs"],
        batch["failed_jobs"],
        batch["cancelled_jobs"],
    )


def real_counts(jobs: Sequence[dict[str, Any]]) -> tuple[int, int, int, int, int]:
    """The counters the latest attempts' real states make."""
    statuses = [j["status"] for j in jobs]
    return (
        statuses.count("pending"),
        statuses.count("running"),
        statuses.count("completed"),
        statuses.count("failed"),
        statuses.count("cancelled"),
    )
