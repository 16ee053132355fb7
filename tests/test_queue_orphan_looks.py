"""The checks of one queue head in flight at once share one look for its job's request
(``QueueOrphans``): every job waiting behind a head checks it again and again, and each check
was a request of its own to NATS. Counted here at the server: a subscription on the JetStream
API subject the looks are sent to sees each one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable, slot_key
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.queue_orphans import QueueOrphans
from tests.stalling_proxy import FreezingProxy, connected_through_a_freezing_proxy
from tests.tools.lock_board import board_has, watching_board
from tests.tools.queue_entries import HOUR, put_entry
from tests.tools.runner_parts import slot_claimer

LOCK = "exports"
JOB_ID = "head-job"
REVISION = 1
CHECKS = 8  # the jobs waiting behind the head


def queue_orphans(settings: Settings, js: JetStreamContext, age: float = 0.0) -> QueueOrphans:
    """Age 0 unless told: a head found missing once is an orphan, so every check answers at its
    first look."""
    names = Names(settings.prefix)
    slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
    return QueueOrphans(slots, JobJournal(js._nc, js, names, "runner-test"), age)


async def check(orphans: QueueOrphans, revision: int = REVISION) -> bool:
    return await orphans.is_orphan(slot_key(LOCK, JOB_ID), revision, JOB_ID)


async def checks_at_once(orphans: QueueOrphans) -> list[bool]:
    return list(await asyncio.gather(*(check(orphans) for _ in range(CHECKS))))


@asynccontextmanager
async def looks_counted(
    nc: NATS, names: Names, kind: str = "requested"
) -> AsyncIterator[list[Msg]]:
    """The looks for ``JOB_ID``'s event of ``kind`` the server receives, as they arrive; counted
    on ``nc``, another connection than the looks' (a look is answered after the server has
    routed it here, so one answered is counted once ``nc.flush()`` has returned)."""
    wanted = names.job_kind_subject(JOB_ID, kind)
    looks: list[Msg] = []

    async def seen(msg: Msg) -> None:
        if msgspec.json.decode(msg.data).get("last_by_subj") == wanted:
            looks.append(msg)

    sub = await nc.subscribe(f"$JS.API.STREAM.MSG.GET.{names.stream}", cb=seen)
    await nc.flush()
    try:
        yield looks
    finally:
        await sub.unsubscribe()


async def test_checks_of_a_head_at_once_make_one_look_and_an_ended_one_is_not_reused(
    settings: Settings, js: JetStreamContext
) -> None:
    """Eight jobs waiting behind a head whose request is missing check it at once: one request
    reaches NATS, and each check takes its answer. A check after it has ended looks again, and
    sees the request stored meanwhile."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "looks")
    try:
        orphans = queue_orphans(settings, nc.jetstream())
        async with looks_counted(js._nc, names) as looks:
            # gather starts every check before the look's task runs: all find it in flight.
            assert await checks_at_once(orphans) == [True] * CHECKS
            await js._nc.flush()
            assert len(looks) == 1
            await eventstore.publish(js, names, events.JobRequested(job_id=JOB_ID, job_type="t"))
            assert await check(orphans) is False
            await js._nc.flush()
            assert len(looks) == 2
    finally:
        await eventstore.close(nc)


async def test_a_failed_look_ends_every_check_of_it_and_is_not_reused(
    own_nats: EmbeddedNats,
) -> None:
    """NATS away, nats-py's buffer for the next connection too small for a look: the one look of
    the checks at once is refused, and each check raises its error. NATS back, the next check
    looks again and answers."""
    settings = Settings(nats_url=own_nats.url, prefix="sharedlookfails")
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "looks", pending_size=8)
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        orphans = queue_orphans(settings, js)
        assert await check(orphans) is True  # the ack inbox subscribed
        own_nats.stop()
        async with asyncio.timeout(10):
            while nc.is_connected:  # noqa: ASYNC110  # nats-py's state: no event to wait on
                await asyncio.sleep(0.01)
        raised = await asyncio.gather(
            *(check(orphans) for _ in range(CHECKS)), return_exceptions=True
        )
        assert all(isinstance(error, nats.errors.OutboundBufferLimitError) for error in raised)
        assert len({id(error) for error in raised}) == 1  # one look's error, taken by each
        await asyncio.to_thread(own_nats.start)
        async with asyncio.timeout(30):
            while not nc.is_connected:  # noqa: ASYNC110  # nats-py's state: no event to wait on
                await asyncio.sleep(0.01)
        assert await check(orphans) is True
    finally:
        await eventstore.close(nc)


@asynccontextmanager
async def answers_held(
    settings: Settings, age: float = 0.0
) -> AsyncIterator[tuple[QueueOrphans, FreezingProxy]]:
    """A ``QueueOrphans`` (of ``age``) whose looks' answers a proxy can hold back."""
    async with connected_through_a_freezing_proxy(settings, "looks") as (nc, proxy):
        orphans = queue_orphans(settings, nc.jetstream(), age)
        assert await orphans.journal.last_event(JOB_ID, "requested") is None  # ack inbox made
        yield orphans, proxy


async def look_held(proxy: FreezingProxy) -> None:
    """Until the server has answered the look in flight (the answer held by the proxy)."""
    async with asyncio.timeout(10):
        while not proxy.held[0]:  # noqa: ASYNC110 - the proxy's count, polled
            await asyncio.sleep(0.01)


def looks_running() -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done()
        and getattr(task.get_coro(), "__qualname__", "") == QueueOrphans._look.__qualname__
    ]


async def test_a_cancelled_check_leaves_the_look_to_the_others(
    settings: Settings, js: JetStreamContext
) -> None:
    """A job waiting behind the head is cancelled while its check's look is in flight: the
    other checks still get the look's answer."""
    async with answers_held(settings) as (orphans, proxy):
        proxy.hold_replies(0)
        checks = [asyncio.create_task(check(orphans)) for _ in range(CHECKS)]
        await look_held(proxy)
        checks[0].cancel()
        proxy.thaw(0)
        answers = await asyncio.wait_for(asyncio.gather(*checks[1:]), 30)
        assert answers == [True] * (CHECKS - 1)
        assert checks[0].cancelled()


async def test_the_look_ends_with_the_last_check_waiting_for_it(
    settings: Settings, js: JetStreamContext
) -> None:
    """Every check of the head cancelled while their look is in flight (the jobs cancelled, the
    runner stopping): the look is cancelled with them, not left waiting for its answer."""
    async with answers_held(settings) as (orphans, proxy):
        proxy.hold_replies(0)
        checks = [asyncio.create_task(check(orphans)) for _ in range(CHECKS)]
        await look_held(proxy)
        for task in checks:
            task.cancel()
        await asyncio.wait(checks)
        await asyncio.sleep(0)  # the look's cancel takes effect at its next step
        assert looks_running() == []


async def test_a_check_right_after_the_last_one_was_cancelled_looks_again(
    settings: Settings, js: JetStreamContext
) -> None:
    """The last check waiting for a look is cancelled, and another check of the head comes
    before the look's cancel has taken effect: it looks again, and is not cancelled with the
    abandoned look (its job's claim would end "cancelled", with nobody having cancelled it)."""
    async with answers_held(settings) as (orphans, proxy):
        proxy.hold_replies(0)
        first = asyncio.create_task(check(orphans))
        await look_held(proxy)
        first.cancel()
        second = asyncio.create_task(check(orphans))  # its first step runs after first's finally
        await asyncio.wait([first])
        proxy.thaw(0)
        assert await asyncio.wait_for(second, 30) is True
        assert first.cancelled()


# The age of the test below, and how long the look for the head's first revision is held: longer
# than the age, so that an age counted from that look is up at once.
AGE = 3.0  # under the 5 s look timeout with HELD, and room for the check right after
HELD = AGE + 0.5


async def test_a_check_of_a_new_revision_does_not_take_a_look_sent_before_it(
    settings: Settings, js: JetStreamContext
) -> None:
    """The head queued again (a new revision) while the look for its first revision is on its
    way: the new revision's check looks for itself. Had it taken that look, sent before the new
    revision existed, its age would count from then and be up ``HELD`` early: the next check,
    right after, would drop it."""
    async with answers_held(settings, AGE) as (orphans, proxy):
        proxy.hold_replies(0)
        first = asyncio.create_task(check(orphans, REVISION))
        await look_held(proxy)
        await asyncio.sleep(HELD)
        again = asyncio.create_task(check(orphans, REVISION + 1))
        await asyncio.sleep(0)  # its first step: a look of its own, or the one in flight
        proxy.thaw(0)
        assert await asyncio.wait_for(again, 30) is False  # found missing: its age starts
        assert await check(orphans, REVISION + 1) is False
        await asyncio.wait_for(first, 30)


async def test_jobs_waiting_behind_a_head_at_once_read_its_status_once(
    settings: Settings, js: JetStreamContext
) -> None:
    """Eight jobs queued behind a head ask at once whether it started already (it should then
    have left the queue): one status read reaches NATS, not one per waiting job."""
    names = Names(settings.prefix)
    slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
    kv = await slots.kv()
    async with watching_board(kv) as (board, _):
        waiters = [f"waiter-{i}" for i in range(CHECKS)]
        for job_id in [JOB_ID, *waiters]:
            await put_entry(kv, LOCK, job_id, time.time())
        for job_id in waiters:
            await board_has(board, LOCK, job_id)
        journal = JobJournal(js._nc, js, names, "runner-test")
        claimer = slot_claimer(slots, journal, board, orphan_age=HOUR)
        assert await journal.last_status(JOB_ID) is None  # the ack inbox subscribed
        requests = [events.JobRequested(job_id=j, job_type="t", lock=LOCK) for j in waiters]
        key = slot_key(LOCK, JOB_ID)
        async with looks_counted(js._nc, names, "status") as reads:
            heads = await asyncio.gather(*(claimer._is_queue_head(r, key) for r in requests))
            assert heads == [False] * CHECKS  # the head, pending, keeps its place
            await js._nc.flush()
            assert len(reads) == 1
