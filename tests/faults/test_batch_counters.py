"""The projector SIGKILLed again and again while the jobs of a batch finish on real runners: once
it is back, the batch's counters and status are exactly its jobs' statuses (no job counted twice
or missed), as a replay from the stream would count them."""

from __future__ import annotations

import asyncio

from jobrunner.common import eventstore
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from tests.faults import figures
from tests.faults.cluster import FaultCluster, now

BATCH_JOBS = 120
PROJECTOR_KILLS = 3


async def publish_batch(cluster: FaultCluster, batch_id: str, total: int) -> None:
    """The batch as the batch endpoint publishes it: request, every job with its place, seal."""
    settings = cluster.settings
    names = Names(settings.prefix)
    jobs: list[events.Publishable] = [
        events.JobRequested(
            job_id=f"{batch_id}-{i}",
            job_type="free",
            parameters={
                "lines": 3,
                # About eighteen seconds for the batch at 8 jobs at once: long enough for the
                # projector to be killed and restarted twice while jobs still end, even where
                # a restart takes seconds (nine were not always, on a loaded CI machine).
                "interval": "0.4",
                "record": str(cluster.records / f"{batch_id}-{i}.txt"),
                "label": f"{batch_id}-{i}",
            },
            batch_id=batch_id,
            batch_index=i,
        )
        for i in range(total)
    ]
    batch: list[events.Publishable] = [
        events.BatchRequested(
            batch_id=batch_id, batch_name="fault batch", total_jobs=total, job_types=["free"]
        ),
        *jobs,
        events.BatchSealed(batch_id=batch_id, total_jobs=total),
    ]
    nc = await eventstore.connect(settings, "fault-test")
    try:
        await eventstore.publish_many(nc.jetstream(), names, batch)
    finally:
        await eventstore.close(nc)


async def ended_jobs(cluster: FaultCluster, batch_id: str) -> int:
    rows = await cluster.query(
        "SELECT count(*) AS n FROM readmodel.jobs WHERE batch_id = $1 "
        "AND status IN ('completed', 'failed', 'cancelled')",
        batch_id,
    )
    return int(rows[0]["n"]) if rows else 0


async def test_projector_killed_while_a_batch_finishes_counts_it_exactly(
    short_ttl_cluster: FaultCluster,
) -> None:
    """Projector SIGKILLed while a batch's jobs finish: after it is back, the counters equal the
    jobs' real statuses and the batch shows completed."""
    cluster = short_ttl_cluster
    batch_id = "faultbatch"
    await publish_batch(cluster, batch_id, BATCH_JOBS)
    projector = cluster.services["projector"]
    kills = 0
    fault_end = now()
    problems: list[str] = []
    async with asyncio.timeout(300):
        while kills < PROJECTOR_KILLS:
            before = await ended_jobs(cluster, batch_id)
            if before >= BATCH_JOBS:
                break
            projector.kill()
            kills += 1
            await cluster.start_service("projector")
            fault_end = now()
            # Kill it again only once it has counted another job's end: each restart counts.
            while True:
                if await ended_jobs(cluster, batch_id) > before:
                    break
                await asyncio.sleep(0.1)
        if kills < 2:
            problems.append(f"the batch finished before 2 kills ({kills})")
        while True:
            rows = await cluster.query("SELECT * FROM readmodel.batches WHERE id = $1", batch_id)
            if rows and rows[0]["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
    batch = rows[0]
    real = {
        r["status"]: r["n"]
        for r in await cluster.query(
            "SELECT status, count(*) AS n FROM readmodel.jobs "
            "WHERE batch_id = $1 AND latest GROUP BY status",
            batch_id,
        )
    }
    counted = {
        "pending": batch["pending_jobs"],
        "running": batch["processing_jobs"],
        "completed": batch["completed_jobs"],
        "failed": batch["failed_jobs"],
        "cancelled": batch["cancelled_jobs"],
    }
    if {k: v for k, v in counted.items() if v} != real:
        problems.append(f"counters {counted} but the jobs are {real}")
    if real != {"completed": BATCH_JOBS}:
        problems.append(f"every job should complete, the jobs are {real}")
    if batch["status"] != "completed" or batch["progress_percent"] != 100.0:
        problems.append(f"batch ends {batch['status']} at {batch['progress_percent']} %")
    figures.record(
        figures.Figure(
            fault=f"projector SIGKILLed {kills}x while a {BATCH_JOBS}-job batch finished",
            outcome=f"batch {batch['status']}",
            printed=BATCH_JOBS,
            stored=batch["completed_jobs"],
            recovery_s=None,
            terminal_s=now() - fault_end,
            holds=not problems,
            note="; ".join(problems),
        )
    )
    assert not problems, "\n".join(problems)
