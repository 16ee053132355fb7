"""Helpers for the history, audit and replay tests: publish events directly, wait for the
projector, and a system without a runner (so published jobs keep the status the test gave them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from tests.system import System

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


@asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[Any]:
    nc = await eventstore.connect(settings, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, Names(settings.prefix), settings)
    try:
        yield js
    finally:
        await eventstore.close(nc)


def job_events(
    job_id: str,
    job_type: str = "scraper",
    minute: int = 0,
    status: JobStatus = JobStatus.PENDING,
    parameters: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    batch_id: str | None = None,
    lines: Sequence[str] = (),
) -> list[events.Event]:
    """A job's events: requested at ``BASE_TIME + minute``, optional lines, then ``status``."""
    at = BASE_TIME + timedelta(minutes=minute)
    out: list[events.Event] = [
        events.JobRequested(
            job_id=job_id,
            job_type=job_type,
            parameters=parameters or {},
            batch_id=batch_id,
            occurred_at=at,
        )
    ]
    if status != JobStatus.PENDING or lines:
        out.append(events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING, occurred_at=at))
    if lines:
        out.append(
            events.LineLogged(
                job_id=job_id,
                lines=[
                    events.LogLine(i, "stdout", "INFO", at + timedelta(seconds=i), text)
                    for i, text in enumerate(lines, start=1)
                ],
                occurred_at=at,
            )
        )
    if status.is_terminal:
        out.append(
            events.StatusChanged(
                job_id=job_id,
                event_id=events.terminal_event_id(job_id),
                status=status,
                result=result,
                occurred_at=at + timedelta(seconds=30),
            )
        )
    return out


def logged_job(
    job_id: str, lines: int, stderr_every: int = 0, batch: int = 500
) -> list[events.Event]:
    """A completed job that printed ``INFO line i [i/N]`` for i in 1..N, in batches."""
    out = job_events(job_id, "emit", status=JobStatus.RUNNING)
    at = BASE_TIME
    rows = [
        events.LogLine(
            i,
            "stderr" if stderr_every and i % stderr_every == 0 else "stdout",
            "INFO",
            at + timedelta(milliseconds=i),
            f"INFO line {i} [{i}/{lines}]",
        )
        for i in range(1, lines + 1)
    ]
    for start in range(0, lines, batch):
        out.append(events.LineLogged(job_id=job_id, lines=rows[start : start + batch]))
    out.append(
        events.StatusChanged(
            job_id=job_id, event_id=events.terminal_event_id(job_id), status=JobStatus.COMPLETED
        )
    )
    return out


async def publish(settings: Settings, batch: Sequence[events.Publishable]) -> int:
    async with publisher(settings) as js:
        return await eventstore.publish_many(js, Names(settings.prefix), batch)


async def wait_projected(settings: Settings, seq: int, timeout: float = 30.0) -> None:
    """Wait until the projector's checkpoint reaches ``seq``."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    applied = await conn.fetchval("SELECT last_seq FROM readmodel.checkpoint")
                except asyncpg.UndefinedTableError:
                    applied = 0
                if applied >= seq:
                    return
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


def without_auth(settings: Settings) -> Settings:
    """These tests are about history, not access: the API runs without tokens for them."""
    if "auth" in Settings.__struct_fields__:
        return msgspec.structs.replace(settings, auth=False)
    return settings


@asynccontextmanager
async def reading_system(settings: Settings) -> AsyncIterator[System]:
    """Projector and API, no runner."""
    system = System(without_auth(settings))
    await system.start_projector()
    await system.start_api()
    try:
        yield system
    finally:
        await system.stop()
