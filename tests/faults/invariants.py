"""The promises a fault must not break, checked by counting: each returns what it found wrong."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from tests.faults.cluster import FaultCluster
from tests.faults.toolrecord import ToolJob, ToolRun
from tests.tools.runners import pid_alive


def lines_problems(
    job: ToolJob, run: ToolRun, stored: list[tuple[int, str]], prefix_only: bool = False
) -> list[str]:
    """Every line the tool printed is stored once, in order, with sequence numbers 1..n.

    ``prefix_only``: the runner itself was killed, so the lines it had read but not yet published
    died with it; what is stored must still be the start of what was printed, once and in order.
    """
    problems = []
    seqs = [seq for seq, _ in stored]
    texts = [text for _, text in stored]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"{job.label}: stored sequence numbers are not 1..{len(seqs)}")
    if len(set(texts)) != len(texts):
        problems.append(f"{job.label}: {len(texts) - len(set(texts))} lines stored twice")
    printed = run.lines
    if run.how is None and texts == [*printed, f"{job.label} line {len(printed) + 1}"]:
        # SIGKILLed between writing a line and recording it: that line was printed too.
        printed = texts
    if prefix_only:
        if texts != printed[: len(texts)]:
            problems.append(f"{job.label}: stored lines are not the start of the printed ones")
    elif texts != printed:
        missing = len(printed) - len(set(printed) & set(texts))
        problems.append(
            f"{job.label}: printed {len(printed)}, stored {len(texts)} "
            f"({missing} printed lines missing, order kept: {texts == sorted(texts, key=_n)})"
        )
    return problems


def _n(text: str) -> int:
    return int(text.rsplit(" ", 1)[1])


def overlap_problems(jobs: list[ToolJob]) -> list[str]:
    """Jobs of one lock never ran at the same time, by the tools' own start and end times."""
    runs = sorted(
        ((job, job.run()) for job in jobs if job.run().started is not None),
        key=lambda pair: pair[1].started or 0.0,
    )
    problems = []
    for (first, a), (second, b) in itertools.pairwise(runs):
        end, start = a.active_until, b.started
        if end is not None and start is not None and start < end:
            problems.append(
                f"lock held twice: {second.label} started {end - start:.2f} s "
                f"before {first.label} ended"
            )
    return problems


async def alive_problems(jobs: list[ToolJob], timeout: float = 15.0) -> list[str]:
    """No tool process outlives its job (waited for, with a deadline)."""
    pids = {job.label: run.pid for job in jobs if (run := job.run()).pid is not None}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while any(pid_alive(pid) for pid in pids.values() if pid):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # nothing to wait on but /proc
    return [
        f"{label}: tool (pid {pid}) still running"
        for label, pid in pids.items()
        if pid and pid_alive(pid)
    ]


async def settle_lines(
    cluster: FaultCluster, job: ToolJob, timeout: float
) -> list[tuple[int, str]]:
    """The job's stored lines once they have caught up with what the tool printed (or the
    deadline passed: the caller then reports what is missing)."""
    await cluster.wait_stored(job.id, len(job.run().lines), timeout)
    return await cluster.stored_lines(job.id)


def outcome(row: object) -> str:
    status = getattr(row, "status", None)
    if status is None:
        return "not in the read model"
    code = getattr(row, "error_code", None)
    return f"{status} {code}" if code else str(status)
