"""Postgres restarted, the projector killed again and again during a flood, a runner killed
mid-job (with another runner alive, and with none alive until one starts later): nothing printed
is stored twice or out of order, nothing the runner published is lost, no job stays running."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults import figures
from tests.faults.cluster import SHORT_TTL, FaultCluster, is_terminal, now
from tests.faults.invariants import alive_problems, lines_problems, outcome, settle_lines
from tests.faults.scenarios import (
    END_GRACE,
    INTERVAL,
    LOST,
    SETTLE_SECONDS,
    follow_job,
    running_on,
)
from tests.faults.toolrecord import ToolJob
from tests.freeze import freeze

LEASE_TTL = SHORT_TTL
# Enough that the projector, killed again as soon as it applied something after each restart,
# cannot have stored it all before the second kill: 60,000 lines were on uvloop and with the
# projector gathering what arrives while it paces its transactions.
FLOOD_LINES = 240_000
PROJECTOR_KILLS = 4


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


async def finish(
    cluster: FaultCluster,
    fault: str,
    job: ToolJob,
    fault_end: float,
    problems: list[str],
    expect_codes: tuple[str, ...] | None = None,
    expect_cancelled: bool = False,
    prefix_only: bool = False,
    timeout: float = 60.0,
    note: str = "",
) -> None:
    """Wait for the job's end and its lines, check them, record the figures, assert. The job
    should complete, unless ``expect_codes`` (failed with one of them) or ``expect_cancelled``
    (cancelled; with ``expect_codes`` too, carrying one of them as its error)."""
    row, recovery, terminal_s = await follow_job(cluster, job, fault_end, timeout)
    try:
        if row is None or not is_terminal(row):
            problems.append(f"job still {outcome(row)} {timeout:.0f} s after the fault")
        elif expect_cancelled:
            if row.status != "cancelled" or (
                expect_codes is not None and row.error_code not in expect_codes
            ):
                problems.append(f"job should end cancelled, ended {outcome(row)}")
        elif expect_codes is None and row.status != "completed":
            problems.append(f"job should complete, ended {outcome(row)}")
        elif expect_codes is not None and (
            row.status != "failed" or row.error_code not in expect_codes
        ):
            problems.append(f"job should end failed {'/'.join(expect_codes)}, ended {outcome(row)}")
        stored = await settle_lines(cluster, job, SETTLE_SECONDS)
        problems += lines_problems(job, job.run(), stored, prefix_only=prefix_only)
        problems += await alive_problems([job])
    finally:
        figures.record(
            figures.Figure(
                fault=fault,
                outcome=outcome(row),
                printed=len(job.run().lines),
                stored=await cluster.stored_count(job.id),
                recovery_s=recovery,
                terminal_s=terminal_s,
                holds=not problems,
                note="; ".join([note, *problems] if note else problems),
            )
        )
        if row is None or not is_terminal(row):
            await cluster.cancel(job.id)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kill", [False, True], ids=["fast-shutdown", "sigkill"])
async def test_postgres_restart_mid_job_keeps_every_line_once(
    cluster: FaultCluster, kill: bool
) -> None:
    """Postgres restarted mid-job: the job completes, every line stored once."""
    job = await cluster.submit("free", lines=120, interval=INTERVAL)
    assert await cluster.wait_stored(job.id, 20, 60) >= 20
    projector = cluster.services["projector"]
    crashes = projector.crashes
    await cluster.restart_postgres(kill=kill)
    fault_end = now()
    await finish(
        cluster,
        f"Postgres {'SIGKILLed' if kill else 'fast shutdown'}, restarted",
        job,
        fault_end,
        [],
        # Not a broken invariant (jobrunner up restarts it), but worth knowing.
        note=f"projector exited and was restarted {projector.crashes - crashes}x",
    )


async def test_projector_killed_repeatedly_during_a_flood_stores_each_line_once(
    cluster: FaultCluster,
) -> None:
    """Projector killed again and again in a flood: every line stored once."""
    job = await cluster.submit("free", lines=FLOOD_LINES, interval=0)
    projector = cluster.services["projector"]
    kills = 0
    fault_end = now()
    back_after: list[float] = []  # each restart: seconds until it applied a line
    assert await cluster.wait_stored(job.id, 1, 60) >= 1
    while kills < PROJECTOR_KILLS:
        before = await cluster.stored_count(job.id)
        if before >= FLOOD_LINES:
            break
        projector.kill()
        kills += 1
        await cluster.start_service("projector")
        fault_end = now()
        # Kill it again only once it has applied something since: each restart is exercised.
        await cluster.wait_stored(job.id, before + 1, 60)
        back_after.append(now() - fault_end)
    await finish(
        cluster,
        f"projector SIGKILLed {kills}x during a {FLOOD_LINES}-line flood",
        job,
        fault_end,
        [] if kills >= 2 else [f"the flood was stored before 2 kills ({kills})"],
        note="restart to first line applied: " + ", ".join(f"{s:.1f}" for s in back_after) + " s",
    )


# A job without a lock is claimed in one round trip (lease and run record pipelined) and its
# tool starts while ``running`` is being stored: the same guarantees as a locked job's.
@pytest.mark.parametrize("locked", [True, False], ids=["locked", "no-lock"])
async def test_runner_killed_mid_job_ends_it_runner_lost_with_another_runner_alive(
    cluster: FaultCluster, locked: bool
) -> None:
    """A runner killed mid-job: the job ends RUNNER_LOST, its tool dies."""
    job_type = cluster.fresh_lock_type() if locked else "free"
    job = await cluster.submit(job_type, lines=1200, interval=INTERVAL)
    assert await cluster.wait_stored(job.id, 20, 60) >= 20
    victim = await running_on(cluster, job)
    cluster.services[victim].kill()
    fault_end = now()
    try:
        await finish(
            cluster,
            "runner SIGKILLed mid-job, another runner alive"
            + ("" if locked else " (job without a lock)"),
            job,
            fault_end,
            [],
            expect_codes=LOST,
            prefix_only=True,
            timeout=LEASE_TTL + END_GRACE,
        )
    finally:
        await cluster.start_service(victim)


async def bring_runners_back(
    cluster: FaultCluster, runners: list[str], frozen: str | None, newcomer: str | None
) -> None:
    """Undo a test's runner faults, however far it got: the cluster is shared by the tests
    after it. The frozen runner is SIGKILLed (that ends a stopped process too)."""
    if frozen is not None:
        cluster.services[frozen].kill()
    for name in runners:
        if not cluster.services[name].alive:
            await cluster.start_service(name)
    if newcomer is not None:
        await asyncio.to_thread(cluster.services[newcomer].stop)
        del cluster.services[newcomer]


async def a_job_on_the_one_runner_alive(
    cluster: FaultCluster, runners: list[str]
) -> tuple[ToolJob, str]:
    """A job printing on one of ``runners`` (its name returned with it), every other one of
    them stopped."""
    job = await cluster.submit(cluster.fresh_lock_type(), lines=1200, interval=INTERVAL)
    assert await cluster.wait_stored(job.id, 20, 60) >= 20
    victim = await running_on(cluster, job)
    for name in runners:
        if name != victim:
            await asyncio.to_thread(cluster.services[name].stop)
    return job, victim


async def none_alive_past_the_lease() -> None:
    """The fault: no runner at all for longer than the lease TTL, so the lease expires
    unwatched."""
    await asyncio.sleep(LEASE_TTL + 2)


async def test_runner_killed_with_none_alive_ends_the_job_once_a_runner_starts(
    cluster: FaultCluster,
) -> None:
    """All runners dead past the lease, then one starts: the job ends RUNNER_LOST."""
    runners = sorted(name for name in cluster.services if name.startswith("runner-"))
    newcomer = None
    try:
        job, victim = await a_job_on_the_one_runner_alive(cluster, runners)
        cluster.services[victim].kill()
        await none_alive_past_the_lease()
        newcomer = cluster.add_runner("runner-new").name
        await cluster.start_service(newcomer)
        fault_end = now()
        await finish(
            cluster,
            "runner SIGKILLed mid-job, none alive for TTL+2 s, then a new runner",
            job,
            fault_end,
            [],
            expect_codes=("RUNNER_LOST",),
            prefix_only=True,
            timeout=LEASE_TTL + END_GRACE,
        )
    finally:
        await bring_runners_back(cluster, runners, None, newcomer)


async def test_runner_frozen_through_a_cancel_then_killed_ends_the_job_cancelled(
    cluster: FaultCluster,
) -> None:
    """A job cancelled while its runner is frozen (SIGSTOP), the runner then SIGKILLed and no
    runner alive past the lease: the job ends cancelled once a runner starts, not failed, with
    no exit code and RUNNER_LOST as its error (why no exit code was seen)."""
    runners = sorted(name for name in cluster.services if name.startswith("runner-"))
    frozen = newcomer = None
    try:
        # None other alive: no runner can find the job lost before its cancel is stored.
        job, victim = await a_job_on_the_one_runner_alive(cluster, runners)
        process = cluster.services[victim].proc
        assert process is not None
        frozen = victim
        freeze(process.pid)  # it cannot act on the cancel
        async with cluster.client() as client:
            cancel = await client.post(f"/api/jobs/{job.id}/cancel")
        assert cancel.status_code == 202, cancel.text
        cluster.services[victim].kill()
        await none_alive_past_the_lease()
        newcomer = cluster.add_runner("runner-new").name
        await cluster.start_service(newcomer)
        fault_end = now()
        await finish(
            cluster,
            "runner SIGSTOPped, job cancelled, runner SIGKILLed, none alive for TTL+2 s, "
            "then a new runner",
            job,
            fault_end,
            [],
            expect_cancelled=True,
            expect_codes=("RUNNER_LOST",),
            prefix_only=True,
            timeout=LEASE_TTL + END_GRACE,
        )
        # The tool is gone with its runner: its exit code is unknown. (Who cancelled is not
        # checked: the cluster's API runs without auth, so no one is named.)
        ended = await cluster.query("SELECT exit_code FROM readmodel.jobs WHERE id = $1", job.id)
        assert ended[0]["exit_code"] is None
    finally:
        await bring_runners_back(cluster, runners, frozen, newcomer)
