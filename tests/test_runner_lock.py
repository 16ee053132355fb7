"""The slot lock and the busy policies: one job per slot, across runners; reject or queue."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path

import msgspec
import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from tests.system import System
from tests.tools.runners import (
    RUNNER_TYPES,
    RunnerProcess,
    start_job,
    status_events,
    wait_status,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease TTL long enough that a loaded test machine never lets a live lease lapse.
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


async def test_twenty_simultaneous_posts_to_an_idle_lock_start_exactly_one(system: System) -> None:
    """Twenty users press Start at once on a reject-type lock: one job starts, 19 get 409."""
    async with system.client() as client:
        # The winner runs long, so no POST of the burst can come after it ended.
        body = {"job_type": "rejecting", "parameters": {"lines": 600}}
        responses = await asyncio.gather(*(client.post("/api/jobs", json=body) for _ in range(20)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] + [409] * 19, [r.text for r in responses]
        winner = next(r.json() for r in responses if r.status_code == 201)
        busy = next(r.json() for r in responses if r.status_code == 409)
        assert busy["error"]["code"] == "SLOT_BUSY"
        assert busy["error"]["running_job"]["id"] == winner["id"]
        assert busy["error"]["running_job"]["job_type"] == "rejecting"
        await wait_status(client, winner["id"], "running")
        await client.delete(f"/api/jobs/{winner['id']}")
        await wait_status(client, winner["id"], "cancelled")


async def test_busy_reject_lock_answers_409_with_the_running_job(system: System) -> None:
    """While a reject-lock job runs, starting another names the holder and its start."""
    async with system.client() as client:
        first = await start_job(client, "rejecting", lines=600)
        running = await wait_status(client, first, "running")
        second = await client.post("/api/jobs", json={"job_type": "rejecting"})
        assert second.status_code == 409
        holder = second.json()["error"]["running_job"]
        assert holder["id"] == first
        # The same time written the same way as everywhere else ("...Z", not "+00:00").
        assert holder["started_at"] == running["started_at"]
        await client.delete(f"/api/jobs/{first}")
        await wait_status(client, first, "cancelled")
        third = await client.post("/api/jobs", json={"job_type": "rejecting"})
        assert third.status_code == 201, third.text


async def test_queued_jobs_start_in_submission_order_as_the_slot_frees(
    system: System, tmp_path: Path
) -> None:
    """Five jobs queued on one lock run one after another, in the order they were submitted."""
    order = tmp_path / "order"
    params = {"lockfile": str(tmp_path / "lock"), "order_file": str(order), "seconds": "0.2"}
    async with system.client() as client:
        ids = [await start_job(client, "queued", label=f"job{i}", **params) for i in range(5)]
        jobs = [await wait_status(client, job_id, "completed", "failed") for job_id in ids]
    assert [j["status"] for j in jobs] == ["completed"] * 5
    assert order.read_text().split() == [f"job{i}" for i in range(5)]
    for before, after in itertools.pairwise(jobs):
        assert before["finished_at"] <= after["started_at"]


async def test_job_types_with_different_locks_run_side_by_side(
    system: System, tmp_path: Path
) -> None:
    """A job on another lock starts while the first lock is busy."""
    async with system.client() as client:
        blocker = await start_job(
            client,
            "queued",
            label="long",
            lockfile=str(tmp_path / "lock"),
            order_file=str(tmp_path / "order"),
            seconds="30",
        )
        await wait_status(client, blocker, "running")
        other = await start_job(client, "rejecting")
        await wait_status(client, other, "completed")
        assert (await client.get(f"/api/jobs/{blocker}")).json()["status"] == "running"
        await client.delete(f"/api/jobs/{blocker}")
        await wait_status(client, blocker, "cancelled")


async def test_two_runner_processes_share_one_slot_without_overlap(
    settings: Settings, tmp_path: Path
) -> None:
    """Two runner processes take queued jobs of one lock one at a time, in submission order."""
    system = System(settings)
    await system.start_projector()
    await system.start_api()
    runners = [
        RunnerProcess(settings, tmp_path / f"runner{i}.log", runner_id=f"proc{i}") for i in range(2)
    ]
    try:
        await asyncio.gather(*(r.start() for r in runners))
        order = tmp_path / "order"
        params = {"lockfile": str(tmp_path / "lock"), "order_file": str(order), "seconds": "0.3"}
        async with system.client() as client:
            ids = [await start_job(client, "queued", label=f"job{i}", **params) for i in range(6)]
            jobs = [await wait_status(client, job_id, "completed", "failed") for job_id in ids]
    finally:
        for runner in runners:
            runner.stop()
        await system.stop()
    assert [j["status"] for j in jobs] == ["completed"] * 6, jobs
    assert order.read_text().split() == [f"job{i}" for i in range(6)]
    spans = sorted((j["started_at"], j["finished_at"]) for j in jobs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


async def test_request_delivered_twice_while_queued_runs_the_job_once(
    system: System, settings: Settings, tmp_path: Path
) -> None:
    """A queued job whose request reaches its runner again while it waits runs once, and ends."""
    order = tmp_path / "order"
    params = {"lockfile": str(tmp_path / "lock"), "order_file": str(order)}
    async with system.client() as client:
        blocker = await start_job(client, "queued", label="blocker", seconds="60", **params)
        await wait_status(client, blocker, "running")
        async with asyncio.timeout(30):  # its tool started (it writes its label first)
            while not order.exists() or "blocker" not in order.read_text():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        # Longer than a lease renewal: a second holder of the lease would show.
        waiting = await start_job(client, "queued", label="waiting", seconds="3", **params)
        await _deliver_request_again(settings, waiting)
        await client.delete(f"/api/jobs/{blocker}")
        await wait_status(client, blocker, "cancelled")
        done = await wait_status(client, waiting, "completed", "failed")
    assert done["status"] == "completed", done
    assert order.read_text().split() == ["blocker", "waiting"]
    assert await status_events(settings, waiting) == ["running", "completed"]


async def _deliver_request_again(settings: Settings, job_id: str) -> None:
    """Publish the job's JobRequested once more (as a redelivery would hand it over) and wait
    until the runner holds both deliveries unacknowledged."""
    nc = await eventstore.connect(settings, "test-redeliver")
    try:
        js = nc.jetstream()
        names = Names(settings.prefix)
        raw = await js.get_last_msg(names.stream, names.job_kind_subject(job_id, "requested"))
        request = codec.decode(raw.data)
        assert isinstance(request, events.JobRequested)
        await eventstore.publish(
            js, names, msgspec.structs.replace(request, event_id=uuid.uuid4().hex)
        )
        async with asyncio.timeout(30):
            while (  # noqa: ASYNC110 - the consumer's state is only polled
                await js.consumer_info(names.stream, names.runner_consumer)
            ).num_ack_pending < 2:
                await asyncio.sleep(0.05)
    finally:
        await eventstore.close(nc)


async def test_a_lock_whose_lease_cannot_be_read_is_busy(system: System) -> None:
    """A value under a reject lock's slot that does not decode (written by hand, corrupt): the
    lock counts as held by someone unknown, and a POST gets 409 SLOT_BUSY naming no job (it used
    to fail with a 500 on reading it); deleted, the lock is free again."""
    nc = await eventstore.connect(system.settings, "test")
    try:
        kv = await nc.jetstream().key_value(Names(system.settings.prefix).locks_bucket)
        await kv.put("slot.single", b"not a lease")
        async with system.client() as client:
            body = {"job_type": "rejecting", "parameters": {"lines": 1}}
            busy = await client.post("/api/jobs", json=body)
            assert busy.status_code == 409, busy.text
            assert busy.json()["error"]["code"] == "SLOT_BUSY"
            assert busy.json()["error"]["running_job"] is None
            await kv.delete("slot.single")
            started = await client.post("/api/jobs", json=body)
            assert started.status_code == 201, started.text
    finally:
        await eventstore.close(nc)
