"""A batch of the numbered tool (tests/faults/tools/numbered.py) as the batch fault tests follow
it: one record file per job shared by all its attempts, the batch and its attempts as the read
models show them at one moment, and what is wrong with them once every job has ended."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

from tests.batch_actions_support import counters, real_counts, submit_through
from tests.faults.cluster import FaultCluster
from tests.faults.toolrecord import ToolJob

TERMINAL = ("completed", "failed", "cancelled")
END_TIMEOUT = 120.0


class BatchJobs:
    """A batch of the numbered tool, one record file per job shared by all its attempts (so the
    record shows every run of that job's work)."""

    def __init__(self, cluster: FaultCluster, name: str, job_type: str, count: int) -> None:
        self.cluster = cluster
        self.name = name
        self.job_type = job_type
        self.count = count
        self.batch_id = ""
        self.job_ids: list[str] = []

    def record(self, index: int) -> ToolJob:
        label = f"{self.name}-{index}"
        return ToolJob("", label, self.cluster.records / f"{label}.txt")

    async def submit(self, lines: int, interval: float) -> None:
        jobs = [
            (
                self.job_type,
                {
                    "lines": lines,
                    "interval": f"{interval:g}",
                    "record": str(self.record(i).record),
                    "label": self.record(i).label,
                },
            )
            for i in range(self.count)
        ]
        self.batch_id, self.job_ids = await submit_through(self.cluster.client, jobs)

    async def snapshot(self) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """The batch row, its latest attempts and every attempt, as of one moment."""
        rows = await self.cluster.query(
            "SELECT row_to_json(b)::text AS batch, "
            "(SELECT coalesce(json_agg(row_to_json(j) ORDER BY j.batch_index, j.attempt), "
            "'[]')::text FROM readmodel.jobs j WHERE j.batch_id = b.id) AS jobs "
            "FROM readmodel.batches b WHERE b.id = $1",
            self.batch_id,
        )
        if not rows:
            return {}, [], []
        batch = json.loads(rows[0]["batch"])
        every = json.loads(rows[0]["jobs"])
        return batch, [j for j in every if j["latest"]], every

    async def wait_all_ended(self, timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        batch: dict[str, Any] = {}
        latest: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    batch, latest, _ = await self.snapshot()
                    if len(latest) == self.count and all(j["status"] in TERMINAL for j in latest):
                        break
                    await asyncio.sleep(0.1)
        return batch, latest

    def problems(
        self, batch: dict[str, Any], latest: list[dict[str, Any]], every: list[dict[str, Any]]
    ) -> list[str]:
        out: list[str] = []
        live = [j["id"] for j in latest if j["status"] not in TERMINAL]
        if len(latest) != self.count or live:
            out.append(f"{len(live)} job(s) never ended; {len(latest)}/{self.count} latest")
        if batch and counters(batch) != real_counts(latest):
            out.append(f"counters {counters(batch)} != real {real_counts(latest)}")
        indexes = sorted(j["batch_index"] for j in latest)
        if indexes != list(range(self.count)):
            out.append("not exactly one latest attempt per batch index")
        for i in range(self.count):
            starts = tool_runs(self.record(i))
            attempts_started = sum(
                1 for j in every if j["batch_index"] == i and j["started_at"] is not None
            )
            if len(starts) > attempts_started:
                out.append(
                    f"job {i}: {len(starts)} tool runs for {attempts_started} started attempts"
                )
            for (_, end), (start, _) in itertools.pairwise(starts):
                if end is None or start < end:
                    out.append(f"job {i}: two runs of its work overlapped")
        return out


def tool_runs(job: ToolJob) -> list[tuple[float, float | None]]:
    """Each run the tool recorded in the job's record: (start, end or last line)."""
    runs: list[tuple[float, float | None]] = []
    text = job.record.read_text() if job.record.exists() else ""
    for fact in text.splitlines():
        parts = fact.split()
        if parts[0] == "start":
            runs.append((float(parts[1]), None))
        elif runs and parts[0] in ("end", "line"):
            runs[-1] = (runs[-1][0], float(parts[1]))
    return runs
