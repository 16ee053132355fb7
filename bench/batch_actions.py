"""How long the batch actions take on big batches, against real NATS and Postgres.

    .venv/bin/python -m bench.batch_actions [--jobs 1000 10000]

Starts its own NATS, Postgres, projector and API (as the tests do; no runner, so nothing a
batch action creates starts and the figures are the API's and projector's alone), then for each
size:

* restart: a batch whose jobs all ended (their ends published by hand) is restarted; time from
  the POST to its ``202``, and until the read model shows every new attempt pending;
* fail: a batch whose jobs all wait for one lock (queued in batch order) is failed; time from the
  POST to its ``202`` (every pending job cancelled and its queue place given back), and until the
  batch's counters show every job cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobrunner.common import eventstore  # noqa: E402
from jobrunner.common.settings import Settings  # noqa: E402
from jobrunner.contracts import events  # noqa: E402
from jobrunner.contracts.names import Names  # noqa: E402
from tests.batch_actions_support import ReadModel, submit_batch  # noqa: E402
from tests.servers import PostgresCluster, nats_url, postgres_cluster  # noqa: E402
from tests.system import System  # noqa: E402

JOB_TYPES = """
[job_types.quick]
argv = ["true"]

[job_types.locked]
argv = ["true"]
lock = "sheet"
on_busy = "queue"
"""


async def end_jobs(settings: Settings, job_ids: list[str]) -> None:
    """Publish each job's end, as a runner would have."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "bench")
    try:
        ends = [
            events.StatusChanged(
                job_id=job_id,
                event_id=events.terminal_event_id(job_id),
                status=events.JobStatus.COMPLETED,
                exit_code=0,
            )
            for job_id in job_ids
        ]
        await eventstore.publish_many(nc.jetstream(), names, ends)
    finally:
        await eventstore.close(nc)


async def until(condition: object, timeout: float = 600.0) -> float:
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not await condition():  # type: ignore[operator]  # noqa: ASYNC110 - a query
            await asyncio.sleep(0.05)
    return time.monotonic() - started


async def measure(system: System, settings: Settings, size: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with ReadModel(settings) as rm, system.client() as client:
        batch_id, job_ids = await submit_batch(client, [("quick", {})] * size)
        await end_jobs(settings, job_ids)

        async def ended() -> bool:
            return (await rm.batch(batch_id)).get("completed_jobs") == size

        await until(ended)
        started = time.monotonic()
        response = await client.post(f"/api/batches/{batch_id}/restart")
        out["restart_202_s"] = time.monotonic() - started
        assert response.status_code == 202, response.text

        async def restarted() -> bool:
            return (await rm.batch(batch_id)).get("pending_jobs") == size

        out["restart_visible_s"] = out["restart_202_s"] + await until(restarted)

        batch_id, _ = await submit_batch(client, [("locked", {})] * size)

        async def submitted() -> bool:
            return (await rm.batch(batch_id)).get("pending_jobs") == size

        await until(submitted)
        started = time.monotonic()
        response = await client.post(f"/api/batches/{batch_id}/fail", json={"reason": "bench"})
        out["fail_202_s"] = time.monotonic() - started
        assert response.status_code == 202, response.text

        async def cancelled() -> bool:
            return (await rm.batch(batch_id)).get("cancelled_jobs") == size

        out["fail_visible_s"] = out["fail_202_s"] + await until(cancelled)
    return out


async def main(nats: str, pg: PostgresCluster, sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        types = Path(tmp) / "types.toml"
        types.write_text(JOB_TYPES)
        settings = Settings(
            nats_url=nats,
            database_url=await pg.fresh_database(),
            prefix="benchactions",
            job_types_file=str(types),
            state_dir=str(Path(tmp) / "state"),
            log_format="console",
            log_level="warning",
        )
        system = System(settings)
        await system.start_projector()
        await system.start_api()
        await system.wait_healthy()
        try:
            print("| jobs | restart → 202 s | restart visible s | fail → 202 s | fail visible s |")
            print("|---:|---:|---:|---:|---:|")
            for size in sizes:
                f = await measure(system, settings, size)
                print(
                    f"| {size} | {f['restart_202_s']:.2f} | {f['restart_visible_s']:.2f} "
                    f"| {f['fail_202_s']:.2f} | {f['fail_visible_s']:.2f} |",
                    flush=True,
                )
        finally:
            await system.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    jobs = parser.parse_args().jobs
    with nats_url() as url, postgres_cluster() as cluster:
        asyncio.run(main(url, cluster, jobs))
