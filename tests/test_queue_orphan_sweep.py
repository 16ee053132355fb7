"""The runners' periodic sweep drops the queue head of a job that was never stored, once this
runner has found its request missing for ``queue_orphan_seconds`` (RESULTS s25posted: the API
keeps the entry when a publish's ack is lost, and before only a waiting job's runner dropped it,
so it stayed on the lock board and in ``jobrunner_jobs_queued``). It looks at each lock's head
only, as the claimer does, counts on its own clock (not the API's ``queued_at``), and deletes
only the entry of the revision it saw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from unittest import mock

import msgspec
import nats.errors
import pytest
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from jobrunner.common import ackinbox, eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import QueueEntry, SlotTable
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.sweep import LostJobSweeper
from tests.freeze import freeze, thaw
from tests.stalling_proxy import FreezingProxy, connected_through_a_freezing_proxy
from tests.tools.lock_board import board_has, watching_board
from tests.tools.queue_entries import HOUR, is_queued, put_entry, store_request
from tests.tools.runner_parts import lost_job_sweeper

# The sweeper's age, short (the setting's floor, 22 s, is for the gap between an entry and its
# request in a real start; the sweep's rule is the same at any age).
ORPHAN_SECONDS = 1.0
PAST_THE_AGE = ORPHAN_SECONDS + 0.5


@asynccontextmanager
async def watched(
    settings: Settings,
    js: JetStreamContext,
    tmp_path: Path,
    sweeper_js: JetStreamContext | None = None,
    age: float = ORPHAN_SECONDS,
) -> AsyncIterator[tuple[KeyValue, LockBoard, LostJobSweeper, asyncio.Event]]:
    """The lock bucket, a board watching it (set the event to stop the watch) and a sweeper
    (its looks and drops on ``sweeper_js``, else on ``js``; ``age``: its
    ``queue_orphan_seconds``)."""
    names = Names(settings.prefix)
    kv = await SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds).kv()
    sweeper_js = sweeper_js or js
    slots = SlotTable(sweeper_js, names, ttl_seconds=settings.lease_ttl_seconds)
    async with watching_board(kv) as (board, stop):
        journal = JobJournal(sweeper_js._nc, sweeper_js, names, "runner-test")
        sweeper = lost_job_sweeper(slots, journal, tmp_path / "runner-tools", board, age)
        yield kv, board, sweeper, stop


async def test_the_sweep_drops_a_head_found_never_stored_for_the_age(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    """Dropped: a head whose request stays missing from one sweep to one the age later, even
    stamped an hour ahead (the API's clock ahead of the runner's). Kept: a head whose request
    is stored, and a head found missing once only, even stamped an hour ago (the API's clock
    behind)."""
    names = Names(settings.prefix)
    now = time.time()
    async with watched(settings, js, tmp_path) as (kv, board, sweeper, _):
        await put_entry(kv, "dead", "never-stored", now + HOUR)
        await put_entry(kv, "kept", "stored", now - HOUR)
        await store_request(js, names, "kept", "stored")
        await board_has(board, "dead", "never-stored")
        await board_has(board, "kept", "stored")
        await sweeper.sweep()  # finds "never-stored" missing: its age starts here

        await put_entry(kv, "young", "seen-once", now - HOUR)
        await board_has(board, "young", "seen-once")
        await asyncio.sleep(PAST_THE_AGE)
        await sweeper.sweep()  # "seen-once": found missing for the first time
        assert not await is_queued(kv, "dead", "never-stored")
        assert await is_queued(kv, "kept", "stored")
        assert await is_queued(kv, "young", "seen-once")


async def test_the_sweep_keeps_the_places_of_a_batch_still_being_published(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    """A batch's entries share one stamp, and ``publish_many`` stores its requests in order: an
    outage in the middle (longer than the age) leaves the head stored and the rest on their
    way. The sweep looks at the head only, as the claimer: the stored jobs behind it keep their
    places (from the review of s26start)."""
    names = Names(settings.prefix)
    lock = "billing"
    batch = [f"b{i}" for i in range(5)]
    async with watched(settings, js, tmp_path) as (kv, board, sweeper, _):
        stamped = time.time() - HOUR  # an outage ago
        for job_id in batch:  # enqueue_many: in batch order, one stamp
            await put_entry(kv, lock, job_id, stamped)
        await store_request(js, names, lock, batch[0])  # stored before NATS went away
        await board_has(board, lock, batch[-1])
        await sweeper.sweep()  # a runner back first sweeps before the API's resend lands
        await asyncio.sleep(PAST_THE_AGE)
        await sweeper.sweep()
        for job_id in batch[1:]:  # the API's resend
            await store_request(js, names, lock, job_id)
        queue = board.queues["slot." + lock]
        order = [job_id for job_id, _ in sorted(queue.items(), key=lambda item: item[1][0])]
        assert order == batch
        for job_id in batch:
            assert await is_queued(kv, lock, job_id), job_id


async def test_the_sweep_keeps_an_entry_queued_again_since_the_board_saw_it(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    """The drop is conditional on the revision the board saw: the same job queued again
    meanwhile (its new entry not on this runner's board yet) is a new entry, not dropped."""
    lock = "reports"
    async with watched(settings, js, tmp_path) as (kv, board, sweeper, stop):
        await put_entry(kv, lock, "again", time.time() - HOUR)
        await board_has(board, lock, "again")
        await sweeper.sweep()  # found missing: its age starts
        seen = board.queues["slot." + lock]["again"][0]
        stop.set()  # the board stops following: it keeps the first entry's revision
        await asyncio.sleep(0.5)
        await put_entry(kv, lock, "again", time.time())  # queued again, a new revision
        await asyncio.sleep(PAST_THE_AGE)
        assert board.queues["slot." + lock]["again"][0] == seen  # the board's view is the old
        await sweeper.sweep()
        assert await is_queued(kv, lock, "again")


class FailingLock(QueueOrphans):
    """Cannot settle ``failing``'s head: an error that is no NATS outage (no per-lock one could
    be made for real: a look for a malformed job id is answered "none", a huge stored message
    is read, a lone surrogate never decodes from an entry, a permission refusal is a timeout)."""

    def __init__(self, sweeper: LostJobSweeper, failing: str) -> None:
        super().__init__(sweeper.slots, sweeper.journal, ORPHAN_SECONDS)
        self.failing = failing
        self.tries = 0  # of the failing lock's head

    async def drop_if_orphan(self, lock: str, revision: int, entry: QueueEntry) -> bool:
        if lock == self.failing:
            self.tries += 1
            raise RuntimeError(f"the head of {lock} cannot be settled")
        return await super().drop_if_orphan(lock, revision, entry)


async def test_a_lock_the_sweep_cannot_settle_does_not_keep_it_from_the_others(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    """One lock's head fails the sweep with an error that is no NATS outage: it is logged and
    tried again next round, and the orphan heads of the locks swept after it are dropped."""
    now = time.time()
    async with watched(settings, js, tmp_path) as (kv, board, sweeper, _):
        await put_entry(kv, "failing", "never-stored", now)
        await put_entry(kv, "dead", "never-stored", now)
        await board_has(board, "failing", "never-stored")
        await board_has(board, "dead", "never-stored")
        assert list(board.queues) == ["slot.failing", "slot.dead"]  # swept in this order
        failing = sweeper.queue_orphans = FailingLock(sweeper, "failing")
        with structlog.testing.capture_logs() as logs:
            await sweeper.sweep()  # "dead" found missing: its age starts
            await asyncio.sleep(PAST_THE_AGE)
            await sweeper.sweep()
        assert not await is_queued(kv, "dead", "never-stored")
        assert await is_queued(kv, "failing", "never-stored")
        assert failing.tries == 2  # once a round
        failed = [e for e in logs if e["event"] == "sweep of a lock's queue failed"]
        assert [e["lock"] for e in failed] == ["slot.failing"] * 2, logs
        assert all("cannot be settled" in e["error"] for e in failed)


async def test_a_heads_age_starts_again_after_a_sweep_that_nats_ended(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """NATS paused past a request's timeout ends a sweep round on a transient error; meanwhile
    a head's request may have been missing only because its publish could not land. The age
    counts again from the next sweep: the head is not dropped by the sweep right after, though
    its first sighting is older than the age, and it is dropped once found missing for the age
    with NATS answering (from the second review of s26start)."""
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    nc = await eventstore.connect(settings, "test")
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, Names(settings.prefix), settings)
        async with watched(settings, js, tmp_path) as (kv, board, sweeper, _):
            await put_entry(kv, "paused", "never-stored", time.time())
            await board_has(board, "paused", "never-stored")
            await sweeper.sweep()  # found missing: its age starts
            assert own_nats.proc is not None
            freeze(own_nats.proc.pid)
            try:  # past the JetStream request timeout (5 s), longer than the age
                with pytest.raises(nats.errors.TimeoutError):
                    async with asyncio.timeout(30):  # a hang: a plain TimeoutError
                        await sweeper.sweep()
            finally:
                thaw(own_nats.proc.pid)
            await sweeper.sweep()  # NATS answers again: the age starts again here
            assert await is_queued(kv, "paused", "never-stored")
            await asyncio.sleep(PAST_THE_AGE)
            await sweeper.sweep()
            assert not await is_queued(kv, "paused", "never-stored")
    finally:
        await eventstore.close(nc)


# The look's timeout (its connection's ack inbox's): an answer held just shorter than it arrives,
# one held just longer fails the look.
REQUEST_TIMEOUT = ackinbox.ACK_TIMEOUT
# The look's timeout where its answer must come: far beyond the hold, so that a loaded machine's
# stall between the thaw and the answer read cannot time the look out.
LONG_REQUEST_TIMEOUT = 60.0
# The age of the held-answer tests: below the held answer's wait (the age would pass while the
# answer is on its way), well above what a loaded machine takes between two sweeps.
HELD_AGE = 2.5


@asynccontextmanager
async def answers_held(
    settings: Settings,
    js: JetStreamContext,
    tmp_path: Path,
    request_timeout: float = REQUEST_TIMEOUT,
) -> AsyncIterator[tuple[KeyValue, LockBoard, LostJobSweeper, FreezingProxy]]:
    """``watched``, the sweeper's looks through a proxy that can hold back their answers (and
    time out after ``request_timeout``: its connection's ack inbox is made with it)."""
    async with connected_through_a_freezing_proxy(settings, "test-sweeper") as (nc, proxy):
        with mock.patch.object(ackinbox, "ACK_TIMEOUT", request_timeout):
            ackinbox.of(nc)  # the connection's ack inbox made now, with this timeout
        async with watched(settings, js, tmp_path, nc.jetstream(), HELD_AGE) as (
            kv,
            board,
            sweeper,
            _,
        ):
            yield kv, board, sweeper, proxy


async def held_until_read(proxy: FreezingProxy, sweeping: asyncio.Task[None]) -> None:
    """Until the server has answered the sweep's look (the answer held by the proxy)."""
    async with asyncio.timeout(REQUEST_TIMEOUT):
        while not proxy.held[0]:  # noqa: ASYNC110 - the proxy's count, polled
            await asyncio.sleep(0.01)
    assert not sweeping.done()


async def test_an_answer_held_up_on_its_way_back_does_not_count_toward_the_age(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    """The sweep's look read by the server (the head's request missing), its answer held on the
    way back past the age (within the request timeout) while the request is stored (a relaying
    NATS node paused, the runner's host stalled). The answer says "missing", and arrives past
    the age: the head stays, its age counted to when the look was sent (session 27; it was
    dropped, a stored job, and ran after the jobs behind it)."""
    names = Names(settings.prefix)
    held = answers_held(settings, js, tmp_path, LONG_REQUEST_TIMEOUT)
    async with held as (kv, board, sweeper, proxy):
        await put_entry(kv, "held", "live", time.time())
        await board_has(board, "held", "live")
        await sweeper.sweep_queues()  # found missing: its age starts
        proxy.hold_replies(0)
        sent = time.monotonic()
        sweeping = asyncio.create_task(sweeper.sweep_queues())
        await held_until_read(proxy, sweeping)
        await store_request(js, names, "held", "live")  # its API's publish lands meanwhile
        await asyncio.sleep(sent + HELD_AGE + 1.0 - time.monotonic())
        proxy.thaw(0)
        await asyncio.wait_for(sweeping, 30)  # answered within the timeout: no error
        assert time.monotonic() - sent > HELD_AGE  # the answer came past the age
        assert await is_queued(kv, "held", "live")
        await sweeper.sweep_queues()  # its request found
        assert await is_queued(kv, "held", "live")


async def test_a_look_whose_answer_is_held_past_the_request_timeout_restarts_the_age(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    """The sweep's look answered just longer than the request timeout fails: the head's age
    counts again from the next look (the request may have been stored meanwhile), so the look
    right after keeps the head though its first sighting is older than the age, and the head is
    dropped once found missing for the age again."""
    async with answers_held(settings, js, tmp_path) as (kv, board, sweeper, proxy):
        await put_entry(kv, "timed-out", "never-stored", time.time())
        await board_has(board, "timed-out", "never-stored")
        await sweeper.sweep_queues()  # found missing: its age starts
        proxy.hold_replies(0)
        sweeping = asyncio.create_task(sweeper.sweep_queues())
        await held_until_read(proxy, sweeping)
        with pytest.raises(nats.errors.TimeoutError):
            await asyncio.wait_for(sweeping, REQUEST_TIMEOUT + 30)
        proxy.thaw(0)
        await sweeper.sweep_queues()  # the age starts again here
        assert await is_queued(kv, "timed-out", "never-stored")
        await asyncio.sleep(HELD_AGE + 0.5)
        await sweeper.sweep_queues()
        assert not await is_queued(kv, "timed-out", "never-stored")
