"""Postgres stopped while a job runs: a viewer who opens (or reopens) the job's live stream then
still follows it to its end, from NATS. The stream used to look the job up in the read models
first and answered 503 until Postgres was back: a browser whose stream reconnected during the
outage (a re-render, a dropped connection) saw the job "running" until then."""

from __future__ import annotations

import asyncio
import uuid

from tests.faults.cluster import FaultCluster, is_terminal
from tests.faults.invariants import outcome
from tests.sse_client import iter_events


async def test_a_job_stream_opened_while_postgres_is_down_follows_the_job_to_its_end(
    short_ttl_cluster: FaultCluster,
) -> None:
    """With Postgres down, a new viewer of a running job gets its lines and its end."""
    cluster = short_ttl_cluster
    job_id, gate = await cluster.submit_held("stream-pg", lines=3)
    postgres_stopped = False
    try:
        # Projected as running: the API knows the job from its read model, not from its POST.
        running = await cluster.wait_job(job_id, lambda row: row.status == "running", 60)
        assert running is not None
        await asyncio.to_thread(cluster.postgres.stop)
        postgres_stopped = True

        statuses: list[str] = []
        lines: list[str] = []
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
                elif event.event == "status":
                    statuses.append(event.json["status"])
                elif event.event == "done":
                    statuses.append(event.json["status"])
                    break
        assert statuses[-1] == "completed", statuses
        assert lines == [f"stream-pg line {n}" for n in (1, 2, 3)], lines

        await cluster.start_postgres()
        postgres_stopped = False
        row = await cluster.wait_job(job_id, is_terminal, 60)
        assert row is not None
        assert row.status == "completed", outcome(row)
    finally:
        gate.touch()
        if postgres_stopped:
            await cluster.start_postgres()
        await cluster.cancel(job_id)


async def test_a_job_stream_of_a_job_nats_does_not_know_while_postgres_is_down_is_unavailable(
    short_ttl_cluster: FaultCluster,
) -> None:
    """With Postgres down, the stream of a job whose request is not in JetStream (aged out, or
    never there) answers 503, not 404: the read models may still hold the job, and a browser
    takes a 404 as the job gone for good and stops following it."""
    cluster = short_ttl_cluster
    job_id = f"job{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(cluster.postgres.stop)
    try:
        async with cluster.client() as client:
            response = await client.get(f"/jobs/stream/{job_id}")
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "READ_MODELS_UNAVAILABLE", response.text
    finally:
        await cluster.start_postgres()
