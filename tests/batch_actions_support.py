"""Batches for tests of the batch actions: submitted by publishing the events a submission
publishes (BatchRequested, each JobRequested with its place, BatchSealed), and read back from the
read models."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from jobrunner.common import database, eventstore
from jobrunner.common.jobtypes import load_job_types, validate_parameters
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts import events
from jobrunner.contracts.names import Names

TERMINAL = ("completed", "failed", "cancelled")


def batch_job_id(batch_id: str, index: int) -> str:
    """A batch job's id, derived as the design says (batchids.py once it lands)."""
    return hashlib.sha256(f"{batch_id}:{index}".encode()).hexdigest()[:32]


async def submit_batch(
    settings: Settings,
    jobs: Sequence[tuple[str, dict[str, Any]]],
    requested_by: str = "test-admin",
    name: str = "test batch",
) -> tuple[str, list[str]]:
    """Publish a batch of ``(job_type, parameters)``; its locked jobs queue in batch order."""
    types = load_job_types(settings.job_types_file)
    names = Names(settings.prefix)
    batch_id = uuid.uuid4().hex
    nc = await eventstore.connect(settings, "test-batches")
    try:
        js = nc.jetstream()
        slots = SlotTable(js, names, settings.lease_ttl_seconds)
        requests = []
        for index, (job_type, parameters) in enumerate(jobs):
            jt = types[job_type]
            job_id = batch_job_id(batch_id, index)
            requests.append(
                events.JobRequested(
                    job_id=job_id,
                    event_id=f"{job_id}-requested",
                    job_type=job_type,
                    parameters=validate_parameters(jt, parameters),
                    lock=jt.lock,
                    requested_by=requested_by,
                    batch_id=batch_id,
                    batch_index=index,
                )
            )
        await eventstore.publish(
            js,
            names,
            events.BatchRequested(
                batch_id=batch_id,
                event_id=f"{batch_id}-requested",
                batch_name=name,
                total_jobs=len(jobs),
                job_types=sorted({t for t, _ in jobs}),
                requested_by=requested_by,
            ),
        )
        for request in requests:
            if request.lock:
                await slots.enqueue(request.lock, request.job_id, request.job_type)
        await eventstore.publish_many(js, names, requests)
        await eventstore.publish(
            js,
            names,
            events.BatchSealed(
                batch_id=batch_id, event_id=f"{batch_id}-sealed", total_jobs=len(jobs)
            ),
        )
    finally:
        await eventstore.close(nc)
    return batch_id, [r.job_id for r in requests]


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
