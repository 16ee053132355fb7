"""A queued job waiting behind a head whose request is not in the stream drops that head by the
same rule as the runners' sweep (``queue_orphans``): once this runner has found the request
missing for ``queue_orphan_seconds`` on its own clock. It used to compare the API's
``queued_at`` (the API host's wall clock) with its own: with the clocks of API and runner apart
by more than the age, a live head was dropped at the first look (the jobs behind it ran first),
or an orphan held the lock for as long as the clocks were apart (session 27)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.js import JetStreamContext

from jobrunner.common.jobtypes import JobType
from jobrunner.common.settings import Settings
from jobrunner.common.slots import QueueEntry, SlotTable, queue_key
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.runner.claim import Claimed
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.running import RunningJob
from tests.tools.lock_board import board_has, watching_board
from tests.tools.queue_entries import HOUR, is_queued, put_entry, store_request
from tests.tools.runner_parts import slot_claimer

# The age: short where the test waits for the head to be dropped; longer where the head's
# request is stored right after the waiter's first looks (well within the age, a loaded
# machine's stalls included) and the test then waits the age out.
SHORT_AGE = 3.0
MID_AGE = 8.0
RECHECK = 0.1  # seconds: the waiter looks at its queue's head this often
LOCK = "printer"
QUEUED = JobType(name="t", lock=LOCK, on_busy="queue")


class CountingJournal(JobJournal):
    """The real journal, counting its look-ups by (job id, kind)."""

    def __init__(self, js: JetStreamContext, names: Names) -> None:
        super().__init__(js._nc, js, names, "runner-test")
        self.looked: Counter[tuple[str, str]] = Counter()

    async def last_event(self, job_id: str, kind: str) -> events.AnyEvent | None:
        self.looked[job_id, kind] += 1
        return await super().last_event(job_id, kind)


@asynccontextmanager
async def waiter_behind(
    settings: Settings, js: JetStreamContext, head: str, stamped: float, age: float
) -> AsyncIterator[tuple[CountingJournal, asyncio.Task[Claimed | None]]]:
    """The queue of ``LOCK``: ``head`` (its entry stamped ``stamped``, its request not stored),
    then the job "waiter" (stored, delivered), which a claimer is claiming (``age``: its
    ``queue_orphan_seconds``)."""
    names = Names(settings.prefix)
    slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
    kv = await slots.kv()
    async with watching_board(kv) as (board, _):
        await put_entry(kv, LOCK, head, stamped)
        await put_entry(kv, LOCK, "waiter", time.time())
        await store_request(js, names, LOCK, "waiter")
        await board_has(board, LOCK, "waiter")
        sub = await js.pull_subscribe(names.kind_subjects("requested"), "claim-test", names.stream)
        [msg] = await sub.fetch(1, timeout=10)
        journal = CountingJournal(js, names)
        claimer = slot_claimer(slots, journal, board, recheck=RECHECK, orphan_age=age)
        request = events.JobRequested(job_id="waiter", job_type="t", lock=LOCK)
        claiming = asyncio.create_task(claimer.claim(request, QUEUED, RunningJob("waiter", msg)))
        try:
            yield journal, claiming
        finally:
            claiming.cancel()
            await asyncio.wait({claiming}, timeout=10)


async def looked_at(
    journal: CountingJournal, job_id: str, times: int, claiming: asyncio.Task[Claimed | None]
) -> None:
    """Until the waiter has looked at the head ``job_id`` (its status) ``times`` times, or has
    stopped waiting (the head dropped, the slot taken)."""
    async with asyncio.timeout(30):
        while journal.looked[job_id, "status"] < times and not claiming.done():  # noqa: ASYNC110
            await asyncio.sleep(RECHECK / 2)


async def test_a_waiter_keeps_a_head_stamped_long_ago_whose_request_comes_within_the_age(
    settings: Settings, js: JetStreamContext
) -> None:
    """The API's clock an hour behind the runner's: the head's entry looks an hour old, but its
    request is stored within the age of the waiter's first look. The head keeps its place: the
    waiter does not take the slot before it."""
    names = Names(settings.prefix)
    kv = await SlotTable(js, names, settings.lease_ttl_seconds).kv()
    stamped = time.time() - HOUR
    async with waiter_behind(settings, js, "late", stamped, MID_AGE) as (journal, claiming):
        # The waiter looks at the head three times, finding its request missing.
        await looked_at(journal, "late", 3, claiming)
        assert await is_queued(kv, LOCK, "late")
        await store_request(js, names, LOCK, "late")  # its API's publish lands
        await asyncio.sleep(MID_AGE)  # the age since the waiter's first look passes
        await looked_at(journal, "late", journal.looked["late", "status"] + 3, claiming)
        assert await is_queued(kv, LOCK, "late")
        assert not claiming.done()


async def test_a_waiter_drops_a_head_stamped_ahead_once_found_missing_for_the_age(
    settings: Settings, js: JetStreamContext
) -> None:
    """The API's clock an hour ahead of the runner's: the head's entry looks queued in the
    future, and its request never comes. The waiter drops it once it has found the request
    missing for the age, and takes the slot."""
    names = Names(settings.prefix)
    kv = await SlotTable(js, names, settings.lease_ttl_seconds).kv()
    stamped = time.time() + HOUR
    async with waiter_behind(settings, js, "never", stamped, SHORT_AGE) as (_, claiming):
        # The age, the waiter's re-checks and a loaded machine's delays: far within this.
        claimed = await asyncio.wait_for(claiming, SHORT_AGE + 30)
        assert claimed is not None
        assert not await is_queued(kv, LOCK, "never")


async def test_a_lock_named_with_dots_has_one_head_for_the_waiter_and_the_sweep(
    settings: Settings, js: JetStreamContext
) -> None:
    """A lock named ``print.er`` is ``slot.print_er`` on the board: the waiter names the lock as
    its job does, the sweep as the board does, and both count one head's age. (Counted twice,
    each sweep's round forgot the waiter's count: the age started again every 5 s.)"""
    names = Names(settings.prefix)
    slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
    kv = await slots.kv()
    await put_entry(kv, "print.er", "never-stored", time.time())
    revision = (await kv.get(queue_key("print.er", "never-stored"))).revision
    assert revision is not None
    entry = QueueEntry(job_id="never-stored", job_type="t", queued_at=time.time())
    orphans = QueueOrphans(slots, JobJournal(js._nc, js, names, "runner-test"), SHORT_AGE)
    assert not await orphans.drop_if_orphan("print.er", revision, entry)  # the waiter's look
    await asyncio.sleep(SHORT_AGE + 0.1)
    assert await orphans.drop_if_orphan("print_er", revision, entry)  # the sweep's, the age on
    assert not await is_queued(kv, "print.er", "never-stored")
