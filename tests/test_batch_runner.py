"""Runners and batches: no job starts before its batch is sealed, one never sealed ends
BATCH_INCOMPLETE, and a batch's jobs take their locks in batch order."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from nats.js import JetStreamContext

from jobrunner.common import batchids, eventstore
from jobrunner.common.jobtypes import load_job_types
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api.batchpublish import BatchEvents
from jobrunner.services.api.batchrequest import plan_batch
from jobrunner.services.runner.seals import BatchSeals
from tests.batch_submit_support import batch_body, jetstream, post_batch
from tests.system import System
from tests.tools.counting_jetstream import CountingJetStream
from tests.tools.runners import RUNNER_TYPES, wait_status

SEAL_TIMEOUT = 6.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings,
        job_types_file=RUNNER_TYPES,
        lease_ttl_seconds=6.0,
        batch_seal_timeout_seconds=SEAL_TIMEOUT,
    )


def unsealed_batch(settings: Settings, *jobs: tuple[str, dict[str, object]]) -> BatchEvents:
    plan = plan_batch(
        batch_body(*jobs), load_job_types(settings.job_types_file), settings.batch_max_jobs
    )
    return BatchEvents(plan, batchids.new_batch_id(), "test-admin")


async def publish(settings: Settings, *batch: events.Publishable) -> None:
    async with jetstream(settings) as js:
        await eventstore.publish_many(js, Names(settings.prefix), batch)


async def test_jobs_of_a_batch_take_a_queued_lock_in_batch_order(
    system: System, tmp_path: Path
) -> None:
    """Five jobs of one batch on a queued lock run one after another, in batch order."""
    order = tmp_path / "order"
    common = {"lockfile": str(tmp_path / "lock"), "order_file": str(order), "seconds": "0.1"}
    body = batch_body(*[("queued", {**common, "label": f"job{i}"}) for i in range(5)])
    async with system.client() as client:
        created = (await post_batch(client, body)).json()
        jobs = [await wait_status(client, j, "completed", "failed") for j in created["job_ids"]]
    assert [j["status"] for j in jobs] == ["completed"] * 5
    assert order.read_text().split() == [f"job{i}" for i in range(5)]


async def test_a_reject_lock_queues_inside_a_batch(system: System) -> None:
    """Three jobs of a reject-type lock in one batch all run, one after another in batch order,
    instead of two being refused."""
    body = batch_body(*[("rejecting", {"lines": 2})] * 3)
    async with system.client() as client:
        response = await post_batch(client, body)
        assert response.status_code == 201, response.text
        ids = response.json()["job_ids"]
        jobs = [await wait_status(client, j, "completed", "failed") for j in ids]
    assert [j["status"] for j in jobs] == ["completed"] * 3
    for before, after in itertools.pairwise(jobs):
        assert before["finished_at"] <= after["started_at"]


async def test_a_job_of_an_unsealed_batch_never_starts_and_ends_batch_incomplete(
    system: System,
) -> None:
    """A batch whose submission stopped before its seal runs nothing; its job ends failed with
    BATCH_INCOMPLETE, telling to submit again with the same Idempotency-Key."""
    batch = unsealed_batch(system.settings, ("emit", {"lines": 1}))
    await publish(system.settings, batch.requested, *batch.jobs)
    async with system.client() as client:
        job = await wait_status(client, batch.job_ids[0], "failed", timeout=SEAL_TIMEOUT + 30)
    assert job["error"]["code"] == "BATCH_INCOMPLETE"
    assert "Idempotency-Key" in job["error"]["message"]
    assert job["started_at"] is None
    assert job["log_count"] == 0


async def test_a_job_sealed_just_before_the_timeout_runs(system: System) -> None:
    """A batch sealed shortly before its jobs' wait would end runs them."""
    batch = unsealed_batch(system.settings, ("emit", {"lines": 1}))
    # Requested SEAL_TIMEOUT - 4.5 s ago: its wait ends 4.5 s from now (room for a loaded machine
    # to project the job first), and the seal comes before.
    early = msgspec.structs.replace(
        batch.jobs[0], occurred_at=events.utcnow() - timedelta(seconds=SEAL_TIMEOUT - 4.5)
    )
    await publish(system.settings, batch.requested, early)
    async with system.client() as client:
        await wait_status(client, early.job_id, "pending")
        await publish(system.settings, batch.sealed)
        job = await wait_status(client, early.job_id, "completed", "failed")
    assert job["status"] == "completed", job


async def test_a_job_requested_past_the_timeout_ends_at_once(system: System) -> None:
    """A job of an unsealed batch handed to a runner after its wait would have ended (say the
    runners were down) ends BATCH_INCOMPLETE without running."""
    batch = unsealed_batch(system.settings, ("emit", {"lines": 1}))
    late = msgspec.structs.replace(
        batch.jobs[0], occurred_at=events.utcnow() - timedelta(seconds=SEAL_TIMEOUT + 1)
    )
    await publish(system.settings, batch.requested, late)
    async with system.client() as client:
        job = await wait_status(client, late.job_id, "failed", timeout=SEAL_TIMEOUT)
    assert job["error"]["code"] == "BATCH_INCOMPLETE"


async def test_a_job_waiting_for_its_seal_can_be_cancelled(system: System, tmp_path: Path) -> None:
    """Cancelling a job that waits for its batch's seal ends it cancelled; it never runs, not
    even once the batch is sealed."""
    batch = unsealed_batch(
        system.settings,
        (
            "queued",
            {"label": "x", "lockfile": str(tmp_path / "l1"), "order_file": str(tmp_path / "o1")},
        ),
    )
    await publish(system.settings, batch.requested, *batch.jobs)
    job_id = batch.job_ids[0]
    async with system.client() as client:
        await wait_status(client, job_id, "pending")
        assert (await client.delete(f"/api/jobs/{job_id}")).status_code == 202
        await publish(system.settings, batch.sealed)
        job = await wait_status(client, job_id, "cancelled")
        # A job queued behind it on the same lock still runs: the waiting job left the queue.
        after = await client.post(
            "/api/jobs",
            json={
                "job_type": "queued",
                "parameters": {
                    "label": "y",
                    "lockfile": str(tmp_path / "l2"),
                    "order_file": str(tmp_path / "o2"),
                },
            },
        )
        assert after.status_code == 201
        assert (await wait_status(client, after.json()["id"], "completed", "failed"))[
            "status"
        ] == "completed"
    assert job["started_at"] is None


async def test_a_batch_failed_before_its_seal_starts_nothing_once_sealed(system: System) -> None:
    """An operator fails a batch whose submission had stopped half-way; a retry that completes
    and seals it later starts none of its jobs: they end cancelled by that operator."""
    batch = unsealed_batch(system.settings, ("emit", {"lines": 1}))
    failed = events.BatchFailed(batch_id=batch.batch_id, reason="broken", requested_by="op")
    await publish(system.settings, batch.requested, failed, *batch.jobs, batch.sealed)
    async with system.client() as client:
        job = await wait_status(client, batch.job_ids[0], "cancelled", "completed", "failed")
    assert (job["status"], job["started_at"], job["log_count"]) == ("cancelled", None, 0)


async def test_a_batch_restarted_after_its_fail_runs_its_sealed_jobs(system: System) -> None:
    """A fail followed by a restart leaves the batch running: its sealed jobs start."""
    batch = unsealed_batch(system.settings, ("emit", {"lines": 1}))
    failed = events.BatchFailed(batch_id=batch.batch_id, reason="broken", requested_by="op")
    restarted = events.BatchRestarted(batch_id=batch.batch_id, mode="unfinished", job_ids=[])
    await publish(system.settings, batch.requested, failed, restarted, *batch.jobs, batch.sealed)
    async with system.client() as client:
        job = await wait_status(client, batch.job_ids[0], "cancelled", "completed", "failed")
    assert job["status"] == "completed", job


async def held_requests(js: JetStreamContext, names: Names) -> int:
    """Requests handed to a runner and not yet acknowledged."""
    return (await js.consumer_info(names.stream, names.runner_consumer)).num_ack_pending


class TestCapacity:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return msgspec.structs.replace(settings, max_concurrent_jobs=2)

    async def test_a_sealed_batch_runs_no_more_jobs_at_once_than_the_runner_may(
        self, system: System
    ) -> None:
        """Six jobs of a batch, all handed to a runner with max_concurrent_jobs = 2 while they
        wait for their seal: once sealed, never more than two run at once."""
        batch = unsealed_batch(system.settings, *[("emit", {"lines": 3, "interval": "0.2"})] * 6)
        await publish(system.settings, batch.requested, *batch.jobs)
        names = Names(system.settings.prefix)
        async with jetstream(system.settings) as js, asyncio.timeout(30):
            # Waiting for a seal holds no capacity: the runner takes all six.
            while await held_requests(js, names) < 6:  # noqa: ASYNC110 (another service)
                await asyncio.sleep(0.05)
        await publish(system.settings, batch.sealed)
        async with system.client() as client:
            jobs = [await wait_status(client, j, "completed", "failed") for j in batch.job_ids]
        assert [j["status"] for j in jobs] == ["completed"] * 6
        for job in jobs:
            at_once = [
                other
                for other in jobs
                if other["started_at"] <= job["started_at"] < other["finished_at"]
            ]
            assert len(at_once) <= 2, f"{len(at_once)} jobs ran at once"


async def test_a_thousand_jobs_woken_by_their_seal_ask_once_whether_their_batch_failed(
    system: System,
) -> None:
    """A sealed batch wakes all its waiting jobs at once. They share one look-up of the batch's
    fail: a thousand at once held the runner's lease renewals up behind them."""
    batch = unsealed_batch(system.settings, ("emit", {"lines": 1}))
    await publish(system.settings, batch.requested, *batch.jobs, batch.sealed)
    names = Names(system.settings.prefix)
    async with jetstream(system.settings) as js:
        counting = CountingJetStream(js)
        seals = BatchSeals(counting, names, recheck_seconds=60)  # type: ignore[arg-type]
        found = await asyncio.gather(*(seals.failed_by(batch.batch_id) for _ in range(1000)))
        assert found == [None] * 1000
        assert counting.lookups == 1
        # Failed: the fail and a restart after it looked up once for all, and the answer kept.
        failed = events.BatchFailed(batch_id=batch.batch_id, reason="stop", requested_by="op")
        await publish(system.settings, failed)
        seals = BatchSeals(counting, names, recheck_seconds=60)  # type: ignore[arg-type]
        counting.lookups = 0
        found = await asyncio.gather(*(seals.failed_by(batch.batch_id) for _ in range(1000)))
        assert {f.reason for f in found if f is not None} == {"stop"}
        assert counting.lookups == 2
        assert await seals.failed_by(batch.batch_id) is not None
        assert counting.lookups == 2


async def test_a_foreign_message_on_a_seal_subject_seals_nothing(system: System) -> None:
    """Junk, or another batch's seal, on a batch's seal subject (not written by jobrunner) does
    not start the unsealed batch's job: it ends BATCH_INCOMPLETE."""
    settings = system.settings
    names = Names(settings.prefix)
    batch = unsealed_batch(settings, ("emit", {"lines": 1}))
    subject = names.batch_kind_subject(batch.batch_id, "sealed")
    await publish(settings, batch.requested)
    async with jetstream(settings) as js:
        await js.publish(subject, b"{not json")
        await js.publish(
            subject, msgspec.json.encode(events.BatchSealed(batch_id="other", total_jobs=1))
        )
    await publish(settings, *batch.jobs)
    async with system.client() as client:
        job = await wait_status(client, batch.job_ids[0], "failed", "completed", timeout=60)
    assert (job["status"], job["error"]["code"], job["started_at"]) == (
        "failed",
        "BATCH_INCOMPLETE",
        None,
    )


@pytest.mark.parametrize("kind", ["failed", "restarted"])
async def test_a_foreign_message_after_a_batchs_fail_keeps_its_jobs_from_starting(
    system: System, kind: str
) -> None:
    """Junk after a batch's fail on its ``failed`` or ``restarted`` subject neither ends nor
    restarts the fail: its sealed job ends cancelled without starting."""
    settings = system.settings
    batch = unsealed_batch(settings, ("emit", {"lines": 1}))
    failed = events.BatchFailed(batch_id=batch.batch_id, reason="broken", requested_by="op")
    await publish(settings, batch.requested, failed)
    async with jetstream(settings) as js:
        await js.publish(Names(settings.prefix).batch_kind_subject(batch.batch_id, kind), b"\x00")
    await publish(settings, *batch.jobs, batch.sealed)
    async with system.client() as client:
        job = await wait_status(client, batch.job_ids[0], "cancelled", "completed", "failed")
    assert (job["status"], job["started_at"], job["log_count"]) == ("cancelled", None, 0)
