"""Ordinary-looking tool output that has wedged shared parts (huge progress numbers, NUL, long
lines of control characters): the job's lines are all stored, and the projector goes on to store
the next job's lines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.faults import figures
from tests.faults.cluster import SHORT_TTL, FaultCluster, is_terminal, now, running_cluster
from tests.faults.invariants import lines_problems, outcome, settle_lines

POISON_LINES = 10  # the plain lines tests/faults/tools/poison.py prints, "poison line 1..10"
AFTER_TIMEOUT = 30.0


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[FaultCluster]:
    """A cluster of its own: a projector this output wedges must not fail the other modules."""
    async with running_cluster(lease_ttl=SHORT_TTL, runners=1) as running:
        yield running


async def test_poison_output_is_stored_and_does_not_stop_the_projector(
    cluster: FaultCluster,
) -> None:
    """Huge numbers, NUL, control characters: every line stored, projector goes on."""
    runner = cluster.services["runner-1"]
    crashes = runner.crashes
    poison_id = await cluster.submit_plain("poison")
    started = now()
    problems: list[str] = []
    poison_row = await cluster.wait_job(poison_id, is_terminal, AFTER_TIMEOUT)
    after = await cluster.submit("free", lines=20, interval=0)
    after_row = await cluster.wait_job(after.id, is_terminal, AFTER_TIMEOUT)
    terminal_s = now() - started if after_row is not None and is_terminal(after_row) else None
    try:
        if poison_row is None or poison_row.status != "completed":
            problems.append(f"the poison job should complete, is {outcome(poison_row)}")
        if after_row is None or after_row.status != "completed":
            problems.append(f"the job after it should complete, is {outcome(after_row)}")
        problems += lines_problems(after, after.run(), await settle_lines(cluster, after, 10))
        await cluster.wait_stored(poison_id, POISON_LINES, 10)
        stored = await cluster.stored_lines(poison_id)
        numbers = [int(text.split()[2]) for _, text in stored if text.startswith("poison line ")]
        if numbers != list(range(1, POISON_LINES + 1)):
            problems.append(f"poison job: stored lines {numbers} of 1..{POISON_LINES}")
    finally:
        figures.record(
            figures.Figure(
                fault="poison output (huge numbers, NUL, 6 x 60 KB of control characters)",
                outcome=f"{outcome(poison_row)}; next job {outcome(after_row)}",
                printed=POISON_LINES,
                stored=await cluster.stored_count(poison_id),
                recovery_s=None,
                terminal_s=terminal_s,
                holds=not problems,
                note="; ".join(
                    [f"runner exited and was restarted {runner.crashes - crashes}x", *problems]
                ),
            )
        )
        for job_id in (poison_id, after.id):
            row = await cluster.job(job_id)
            if row is None or not is_terminal(row):
                await cluster.cancel(job_id)
    assert not problems, "\n".join(problems)
