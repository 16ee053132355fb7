"""The projector's own cost, without NATS: a history projected and applied by
``store.apply_batch`` in 10,000-event transactions into a fresh embedded Postgres, best of a few
rounds (the machine is shared; the best round is the least disturbed one).

    .venv/bin/python -m bench.projector_apply                        # bench.history's jobs
    .venv/bin/python -m bench.projector_apply --history batches      # bench.batches's batches

Run it from two checkouts (``PYTHONPATH=<checkout>``) to compare a change with its base.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import time
from typing import Any

import asyncpg

from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import new_scratch_dir
from jobrunner.services.projector import store, timestamps
from jobrunner.services.projector.projections import project

TRANSACTION_EVENTS = 10_000


def history(kind: str, size: int) -> list[Any]:
    if kind == "batches":
        from bench.batches import batch_history

        return batch_history(size)
    from bench.history import history as job_history

    return job_history(size)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = new_scratch_dir("jobrunner-bench-apply-")
    postgres = EmbeddedPostgres(root / "pg", database="jobrunner")
    await asyncio.to_thread(postgres.start)
    try:
        stream = history(args.history, args.size)
        numbered = [(seq, project(event, seq)) for seq, event in enumerate(stream, start=1)]
        rates = []
        for _ in range(args.rounds):
            conn = await asyncpg.connect(postgres.url)
            await timestamps.init_connection(conn)  # the projector's pool's set-up
            try:
                await conn.execute("DROP SCHEMA IF EXISTS readmodel CASCADE")
                await store.create_schema(conn)
                started = time.perf_counter()
                for start in range(0, len(numbered), TRANSACTION_EVENTS):
                    await store.apply_batch(conn, numbered[start : start + TRANSACTION_EVENTS])
                rates.append(len(numbered) / (time.perf_counter() - started))
            finally:
                await conn.close()
    finally:
        await asyncio.to_thread(postgres.stop)
        shutil.rmtree(root, ignore_errors=True)
    return {
        "history": args.history,
        "events": len(numbered),
        "events_per_s": [round(r) for r in rates],
        "best_events_per_s": round(max(rates)),
        "load_avg": os.getloadavg(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", choices=("jobs", "batches"), default="jobs")
    parser.add_argument("--size", type=int, default=30_000, help="jobs, or batches")
    parser.add_argument("--rounds", type=int, default=3)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
