"""Postgres stopped while /api/jobs/stream is open: the stream meets an event of a job it does not
know (it opened after the job's request) and cannot look the job up. It used to end there (the
read models' error re-raised mid-stream); it keeps going, and sends what the event alone tells."""

from __future__ import annotations

import asyncio

from tests.faults.cluster import FaultCluster
from tests.sse_client import iter_events


async def test_the_all_jobs_stream_keeps_going_through_an_unknown_jobs_end_while_postgres_is_down(
    short_ttl_cluster: FaultCluster,
) -> None:
    """A job that ends while Postgres is down shows as completed on an all-jobs stream that
    opened after its request, and the stream stays open."""
    cluster = short_ttl_cluster
    job_id, gate = await cluster.submit_held("updates-pg", lines=1)
    postgres_stopped = False
    try:
        running = await cluster.wait_job(job_id, lambda row: row.status == "running", 60)
        assert running is not None
        seen: list[str] = []
        async with (
            cluster.client() as client,
            asyncio.timeout(60),
            # No ``after``: the stream starts after what the read models show, the job's
            # request and start included, so it does not know the job.
            client.stream("GET", "/api/jobs/stream") as response,
        ):
            assert response.status_code == 200, await response.aread()
            await asyncio.to_thread(cluster.postgres.stop)
            postgres_stopped = True
            gate.touch()
            async for event in iter_events(response):
                if event.event == "job_update" and event.json["jobId"] == job_id:
                    seen.append(event.json["status"])
                    if event.json["status"] == "completed":
                        break
        assert seen[-1] == "completed", seen
    finally:
        gate.touch()
        if postgres_stopped:
            await cluster.start_postgres()
        await cluster.cancel(job_id)
