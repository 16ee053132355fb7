"""Postgres frozen (SIGSTOPped: connects and queries never answer) while live streams are open or
opened, with the API as ``jobrunner up`` runs it (read deadline 60 s, a stream read's bound 5 s).
The all-jobs stream used to wait a whole read deadline for a job it did not know, then end; a job
stream opened meanwhile answered 503 after the same wait. Both now go on from NATS: a frozen read
is given up after ``stream_read_timeout_seconds``, as a refused one."""

from __future__ import annotations

import asyncio

from tests.faults.cluster import FaultCluster, is_terminal
from tests.faults.invariants import outcome
from tests.sse_client import SseEvent, iter_events
from tests.tools.postgres_processes import frozen_postgres


async def test_the_all_jobs_stream_follows_a_job_to_its_end_through_a_frozen_postgres(
    short_ttl_cluster: FaultCluster,
) -> None:
    """A job the stream does not know ends while Postgres is frozen: its end shows while Postgres
    is still frozen; after the thaw the same stream shows the next job. Each frame once, in
    order."""
    cluster = short_ttl_cluster
    job_id, gate = await cluster.submit_held("updates-frozen", lines=1)
    next_id: str | None = None
    next_gate = None
    ids: list[int] = []
    try:
        running = await cluster.wait_job(job_id, lambda row: row.status == "running", 60)
        assert running is not None
        async with (
            cluster.client() as client,
            asyncio.timeout(90),
            # No ``after``: the stream starts after what the read models show (the job's
            # request and start included), so it does not know the job.
            client.stream("GET", "/api/jobs/stream") as response,
        ):
            assert response.status_code == 200, await response.aread()
            events = aiter(iter_events(response))
            with frozen_postgres(cluster.postgres):
                gate.touch()
                async for event in events:
                    if event.id is not None:
                        ids.append(int(event.id))
                    if shows(event, job_id, "completed"):
                        break
            next_id, next_gate = await cluster.submit_held("updates-thawed", lines=1)
            async for event in events:
                if event.id is not None:
                    ids.append(int(event.id))
                if shows(event, next_id):
                    break
        assert ids == sorted(set(ids)), ids
    finally:
        gate.touch()
        if next_gate is not None:
            next_gate.touch()
        await cluster.cancel(job_id)
        if next_id is not None:
            await cluster.cancel(next_id)


async def test_a_job_stream_opened_while_postgres_is_frozen_follows_the_job_to_its_end(
    short_ttl_cluster: FaultCluster,
) -> None:
    """With Postgres frozen, a new viewer of a running job gets its lines and its end (the job
    known from its JobRequested in NATS once the row's read passed the stream's bound)."""
    cluster = short_ttl_cluster
    job_id, gate = await cluster.submit_held("stream-frozen", lines=3)
    try:
        running = await cluster.wait_job(job_id, lambda row: row.status == "running", 60)
        assert running is not None
        statuses: list[str] = []
        lines: list[str] = []
        with frozen_postgres(cluster.postgres):
            async with (
                cluster.client() as client,
                asyncio.timeout(60),
                client.stream("GET", f"/jobs/stream/{job_id}") as response,
            ):
                assert response.status_code == 200, await response.aread()
                gate.touch()
                async for event in iter_events(response):
                    if event.event == "message":
                        lines.append(event.json["text"])
                    elif event.event in ("status", "done"):
                        statuses.append(event.json["status"])
                        if event.event == "done":
                            break
        assert statuses[-1] == "completed", statuses
        assert lines == [f"stream-frozen line {n}" for n in (1, 2, 3)], lines
        row = await cluster.wait_job(job_id, is_terminal, 60)
        assert row is not None
        assert row.status == "completed", outcome(row)
    finally:
        gate.touch()
        await cluster.cancel(job_id)


def shows(event: SseEvent, job_id: str, status: str | None = None) -> bool:
    """Whether ``event`` is a job_update of ``job_id`` (in ``status``, if given)."""
    return (
        event.event == "job_update"
        and event.json["jobId"] == job_id
        and (status is None or event.json["status"] == status)
    )
