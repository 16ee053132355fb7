"""A job that may run but for the runner's capacity waits for it quietly: it asks nothing of
NATS while it waits (a sealed batch puts a thousand jobs there at once), starts as soon as a
unit frees, and ends its wait at once when cancelled."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.jobtypes import load_job_types
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.claim import SlotClaimer
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.running import RunnerIdentity, RunningJob
from tests.tools.counting_jetstream import CountingJetStream
from tests.tools.runners import RUNNER_TYPES

RECHECK = 0.1  # seconds: the waits below last many of these


async def delivered_requests(js: JetStreamContext, settings: Settings, count: int) -> list[Msg]:
    """``count`` JobRequested of a type without a lock, as a runner's consumer delivers them."""
    names = Names(settings.prefix)
    for n in range(count):
        request = events.JobRequested(
            job_id=f"waiting-{n}",
            job_type="emit",
            parameters={},
            occurred_at=datetime.now(UTC),
        )
        await eventstore.publish(js, names, request)
    sub = await js.pull_subscribe(names.kind_subjects("requested"), "claim-test", names.stream)
    return await sub.fetch(count, timeout=10)


async def test_a_job_waiting_for_capacity_asks_nothing_of_nats_and_starts_when_a_unit_frees(
    settings: Settings, js: JetStreamContext
) -> None:
    names = Names(settings.prefix)
    counting = CountingJetStream(js)
    slots = SlotTable(js, names, ttl_seconds=10)
    journal = JobJournal(js._nc, counting, names, "runner-test")  # type: ignore[arg-type]
    capacity = asyncio.Semaphore(0)
    claimer = SlotClaimer(
        slots,
        LockBoard(),
        journal,
        RunnerIdentity.of_this_process(),
        capacity,
        RECHECK,
        QueueOrphans(slots, journal, settings.queue_orphan_seconds),
    )
    job_type = load_job_types(RUNNER_TYPES)["emit"]
    msgs = await delivered_requests(js, settings, 3)
    jobs = [RunningJob(f"waiting-{n}", msg) for n, msg in enumerate(msgs)]
    for job in jobs:
        job.holds_capacity = False  # given back while it waited (for its batch's seal)
    requests = [events.JobRequested(job_id=job.job_id, job_type="emit") for job in jobs]
    claims = [
        asyncio.create_task(claimer.claim(request, job_type, job))
        for request, job in zip(requests, jobs, strict=True)
    ]
    await asyncio.sleep(20 * RECHECK)
    assert not any(claim.done() for claim in claims), [c.exception() for c in claims if c.done()]
    assert counting.lookups == 0

    jobs[2].cancel("someone")  # cancelled while it waits: it ends without a unit
    capacity.release()
    first = await asyncio.wait_for(claims[0], 30)
    assert first is not None
    assert jobs[0].holds_capacity
    assert await asyncio.wait_for(claims[2], 30) is None
    assert not jobs[2].holds_capacity
    assert not claims[1].done()  # the one unit is taken
    capacity.release()
    assert await asyncio.wait_for(claims[1], 30) is not None
