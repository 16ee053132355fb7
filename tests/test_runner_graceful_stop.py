"""A runner's graceful stop (SIGTERM, Ctrl-C): what it does to the jobs it is handling.

A job whose tool it was running ends ``failed`` with ``RUNNER_STOPPED`` (its whole process
group stopped as a cancel would): never ``cancelled``, which says an operator asked. A job that
was still waiting for its slot, or whose request came in as the stop began, is left pending for
the next runner.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common import batchids, eventstore, subscription
from jobrunner.common.jobtypes import load_job_types
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable, SlotValue, slot_key
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api.batchpublish import BatchEvents
from jobrunner.services.api.batchrequest import plan_batch
from jobrunner.services.runner.claim import Claimed, SlotClaimer
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.requests import RequestLoop
from jobrunner.services.runner.running import RunningJob
from tests.batch_submit_support import batch_body, jetstream
from tests.system import System
from tests.tools.runner_holds import wait_requests_held
from tests.tools.runner_parts import slot_claimer
from tests.tools.runners import (
    RUNNER_TYPES,
    pid_alive,
    start_job,
    status_events,
    wait_dead,
    wait_file,
    wait_status,
)
from tests.tools.running_runner import running_runner
from tests.tools.slot_leases import held, slot_table

ENDED = ("cancelled", "failed", "completed")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease TTL long enough that a loaded test machine never lets a live lease lapse.
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


async def runs_once_on_the_next_runner(system: System, job_id: str) -> None:
    """The job left by the stopped runner runs on a runner started after it, once."""
    await system.start_runner("next runner")
    async with system.client() as client:
        job = await wait_status(client, job_id, *ENDED)
    assert job["status"] == "completed", job
    assert await status_events(system.settings, job_id) == ["running", "completed"]


async def test_a_job_running_at_the_runners_stop_fails_runner_stopped_not_cancelled(
    system: System, tmp_path: Path
) -> None:
    """The runner stopped while its tool ran: failed, RUNNER_STOPPED, nobody named as canceller,
    the tool and its SIGTERM-deaf grandchild gone."""
    pidfile = tmp_path / "pids"
    async with system.client() as client:
        job_id = await start_job(client, "locked_family", pidfile=str(pidfile))
        tool, grandchild = (int(pid) for pid in (await wait_file(pidfile)).split())
        assert pid_alive(grandchild)
        await system.stop_service("runner")
        job = await wait_status(client, job_id, *ENDED)
    assert job["status"] == "failed", job
    assert job["cancelled_by"] is None
    assert job["error"]["code"] == "RUNNER_STOPPED"
    assert f"/api/jobs/{job_id}/restart" in job["error"]["message"]
    await wait_dead(tool)
    await wait_dead(grandchild)


async def test_a_job_waiting_for_its_lock_at_the_runners_stop_stays_pending_for_the_next_runner(
    system: System, tmp_path: Path
) -> None:
    """Queued jobs the stopped runner was holding are not ended: the next runner runs them, in
    their places in the lock's queue."""
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    async with system.client() as client:
        running = await start_job(client, "locked_family", pidfile=str(first))
        await wait_file(first)
        waiting = await start_job(client, "locked_family", pidfile=str(second))
        await wait_requests_held(system.settings, 1)  # the runner holds it, waiting
        behind = await start_job(client, "locked_family", pidfile=str(third))
        await wait_requests_held(system.settings, 2)
        await system.stop_service("runner")
        await wait_status(client, running, *ENDED)
        await system.start_runner("next runner")
        job = await wait_status(client, waiting, "running", *ENDED)
        assert job["status"] == "running", job
        await wait_file(second)
        assert (await client.get(f"/api/jobs/{behind}")).json()["status"] == "pending"
        await client.post(f"/api/jobs/{waiting}/cancel")
        await wait_status(client, waiting, *ENDED)
        job = await wait_status(client, behind, "running", *ENDED)
        assert job["status"] == "running", job
        await wait_file(third)
        await client.post(f"/api/jobs/{behind}/cancel")
        await wait_status(client, behind, *ENDED)


async def test_a_batch_job_waiting_for_its_seal_at_the_runners_stop_runs_on_the_next_runner(
    system: System,
) -> None:
    """A batch job the stopped runner held while its batch's submission was incomplete is not
    ended: once the batch is sealed, the next runner runs it."""
    settings = system.settings
    plan = plan_batch(
        batch_body(("emit", {"lines": 1})),
        load_job_types(settings.job_types_file),
        settings.batch_max_jobs,
    )
    batch = BatchEvents(plan, batchids.new_batch_id(), "test-admin")
    names = Names(settings.prefix)
    async with jetstream(settings) as js:
        await eventstore.publish_many(js, names, [batch.requested, *batch.jobs])
        await wait_requests_held(settings, 1)  # the runner holds it, waiting for the seal
        await system.stop_service("runner")
        await system.start_runner("next runner")
        await eventstore.publish_many(js, names, [batch.sealed])
    async with system.client() as client:
        job = await wait_status(client, batch.jobs[0].job_id, *ENDED)
    assert job["status"] == "completed", job


async def test_a_request_fetched_as_the_runners_stop_begins_runs_once_on_the_next_runner(
    projector_and_api: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request the runner's fetch brought in just as its stop began (a fetch under way is
    never abandoned) is not started by the stopping runner: the job stays pending and runs
    once on the next runner."""
    system = projector_and_api
    fetch_some = subscription.fetch_some
    stops: list[asyncio.Event] = []

    async def stop_as_the_request_comes(*args: object, **kwargs: object) -> object:
        msgs = await fetch_some(*args, **kwargs)  # type: ignore[arg-type]
        if msgs:
            stops[0].set()
        return msgs

    # In place before the runner starts: its first fetch is then the patched one.
    monkeypatch.setattr(subscription, "fetch_some", stop_as_the_request_comes)
    async with running_runner(system.settings) as runner, system.client() as client:
        stops.append(runner.stop)
        job_id = await start_job(client, "emit", lines=1)
        await asyncio.wait_for(runner.task, 30)
        # Nothing stored: the job is pending, never ``running`` on the stopping runner.
        assert await status_events(system.settings, job_id) == []
    monkeypatch.undo()
    await runs_once_on_the_next_runner(system, job_id)


async def test_a_job_whose_slot_was_claimed_as_the_runners_stop_began_gets_its_reservation_back(
    projector_and_api: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's stop began after it claimed the slot of a job on a ``reject`` lock and
    before the job started: the job is not ended, the runner's claim is undone (no holder, no
    run record), the API's reservation of the lock is the job's again, and the next runner
    runs the job once."""
    system = projector_and_api
    claim = SlotClaimer.claim
    stops: list[asyncio.Event] = []

    async def stop_once_claimed(
        claimer: SlotClaimer, request: Any, job_type: Any, job: RunningJob
    ) -> Claimed | None:
        claimed = await claim(claimer, request, job_type, job)
        stops[0].set()
        await job.runner_stopping.wait()  # the stop has reached the job: its start check next
        return claimed

    monkeypatch.setattr(SlotClaimer, "claim", stop_once_claimed)
    async with running_runner(system.settings) as runner, system.client() as client:
        stops.append(runner.stop)
        job_id = await start_job(client, "rejecting")
        await asyncio.wait_for(runner.task, 30)
        assert await status_events(system.settings, job_id) == []
        async with slot_table(system.settings) as slots:
            assert await slots.holder(job_id) is None
            assert await slots.run_record(job_id) is None
            lease = await slots.current(slot_key("single", job_id))
            assert lease is not None
            assert lease.value == SlotValue(job_id=job_id, phase="reserved", job_type="rejecting")
    monkeypatch.undo()
    await runs_once_on_the_next_runner(system, job_id)


async def test_a_claims_undo_ends_once_the_runners_connection_is_closed(
    settings: Settings,
) -> None:
    """The undo of a failed claim is retried while NATS is away, but not once the runner's
    stop closed its connection (no retry can pass then): it is given up, and said so."""
    nc = await eventstore.connect(settings, "runner")
    names = Names(settings.prefix)
    await eventstore.ensure_topology(nc.jetstream(), names, settings)
    slots = SlotTable(nc.jetstream(), names, settings.lease_ttl_seconds)
    journal = JobJournal(nc, nc.jetstream(), names, "runner-test")
    loop = RequestLoop(
        load_job_types(settings.job_types_file),
        slots,
        journal,
        slot_claimer(slots, journal),
        cast(Any, None),  # neither the seals nor the executor take part in an undo
        cast(Any, None),
        asyncio.Semaphore(1),
        give_back_seconds=3600.0,
    )
    await eventstore.close(nc)
    request = events.JobRequested(job_id="j-undo", job_type="rejecting", lock="single")
    with capture_logs() as logs:
        # Bounded only against a hang: before, the undo retried for its whole hour.
        await asyncio.wait_for(loop._give_back(request), 30)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["failed claim not undone"]


async def test_a_job_waiting_for_capacity_at_the_runners_stop_runs_on_the_next_runner(
    projector_and_api: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner of one job at a time: a job queued on a lock, whose turn came while another
    job held the runner's only place, is handed back at the stop (SIGTERM's stop event) at
    once, not after its wait's re-check (an hour here) nor at the stop's deadline (which logs
    "jobs did not end"), and runs once on the next runner."""
    system = projector_and_api
    take_capacity = SlotClaimer._take_capacity
    running_beside: list[bool] = []
    waits_for_capacity = asyncio.Event()
    # Each wait for capacity's outcome: (a place taken, its runner stopping).
    ended_waits: list[tuple[bool, bool]] = []

    async def noted(claimer: SlotClaimer, job: RunningJob) -> bool:
        if not running_beside:
            return await take_capacity(claimer, job)
        # The other job holds the place: this is a wait for capacity. Never over by its own
        # end: only the stop can end this wait in time.
        claimer.recheck_seconds = 3600.0
        waits_for_capacity.set()
        took = await take_capacity(claimer, job)
        ended_waits.append((took, job.runner_stopping.is_set()))
        return took

    monkeypatch.setattr(SlotClaimer, "_take_capacity", noted)
    one_at_a_time = msgspec.structs.replace(system.settings, max_concurrent_jobs=1)
    first, second = tmp_path / "first", tmp_path / "second"
    async with slot_table(system.settings) as slots, system.client() as client:
        # The lock is another job's while the queued one is taken: it waits, its place given
        # up, and the other job takes that place.
        blocker = await slots.try_acquire("slot.crash_sheet", held("another job"))
        assert blocker is not None
        async with running_runner(one_at_a_time) as runner:
            queued = await start_job(client, "locked_family", pidfile=str(second), seconds="0.5")
            await wait_requests_held(system.settings, 1)
            beside = await start_job(client, "family", pidfile=str(first))
            await wait_file(first)
            running_beside.append(True)
            await asyncio.wait_for(waits_for_capacity.wait(), 30)
            runner.stop.set()
            await asyncio.wait_for(runner.task, 30)
            assert await status_events(system.settings, queued) == []
            assert not [e for e in runner.logs if e["event"].startswith("jobs did not end")]
            # The one wait for capacity ended without a place, by the stop.
            assert ended_waits == [(False, True)]
        monkeypatch.undo()
        assert (await wait_status(client, beside, *ENDED))["error"]["code"] == "RUNNER_STOPPED"
        await slots.release(blocker)
    await runs_once_on_the_next_runner(system, queued)
