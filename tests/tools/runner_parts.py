"""A runner's parts for the tests that drive them one by one: its journal and slot table on a
connection of their own to the test's own nats-server, whose buffer for the next connection holds
only ``pending_size`` bytes (for the tests that stop NATS and then check what a failed read or
write left running); a claimer and a lost-job sweeper made as the runner makes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.claim import SlotClaimer
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.orphans import ToolLedger
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.running import RunnerIdentity
from jobrunner.services.runner.sweep import LostJobSweeper


class RunnerParts(NamedTuple):
    settings: Settings
    names: Names
    nc: NATS
    js: JetStreamContext
    journal: JobJournal
    slots: SlotTable


@asynccontextmanager
async def runner_parts(
    server: EmbeddedNats, prefix: str, pending_size: int, name: str = "runner"
) -> AsyncIterator[RunnerParts]:
    """The parts on ``server`` (streams and buckets made), the connection closed after."""
    settings = Settings(nats_url=server.url, prefix=prefix)
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, name, pending_size=pending_size)
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        journal = JobJournal(nc, js, names, "runner-test")
        slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
        yield RunnerParts(settings, names, nc, js, journal, slots)
    finally:
        await eventstore.close(nc)


def one_read(names: Names, job_id: str) -> int:
    """The size of the message-get request each of a job's reads sends (its status and its
    cancel differ only in the kind, of one length): a buffer this size holds one read."""
    return len(msgspec.json.encode({"last_by_subj": names.job_kind_subject(job_id, "status")}))


def slot_claimer(
    slots: SlotTable,
    journal: JobJournal,
    board: LockBoard | None = None,
    recheck: float = 1.0,
    orphan_age: float = 60.0,
) -> SlotClaimer:
    """A claimer of one slot at a time, as the runner's: it looks at a queue's head again every
    ``recheck`` seconds and drops a head whose request stays missing for ``orphan_age``; a
    ``board`` that is not watching unless given."""
    return SlotClaimer(
        slots,
        board or LockBoard(),
        journal,
        RunnerIdentity.of_this_process(),
        asyncio.Semaphore(1),
        recheck,
        QueueOrphans(slots, journal, orphan_age),
    )


def lost_job_sweeper(
    slots: SlotTable,
    journal: JobJournal,
    tools: Path,
    board: LockBoard | None = None,
    orphan_age: float = 60.0,
) -> LostJobSweeper:
    """The runner's sweep of lost jobs and orphaned queue heads (``orphan_age``), its ledger of
    tools in ``tools``; a ``board`` that is not watching unless given."""
    return LostJobSweeper(
        slots,
        board or LockBoard(),
        journal,
        RunnerIdentity.of_this_process(),
        ToolLedger(tools),
        set(),
        QueueOrphans(slots, journal, orphan_age),
    )


async def stopped_under(nc: NATS, server: EmbeddedNats) -> None:
    """``server`` stopped, and ``nc`` knows it: what it sends now waits in its buffer."""
    server.stop()
    async with asyncio.timeout(10):
        while nc.is_connected:  # noqa: ASYNC110  # nats-py's state: no event to wait on
            await asyncio.sleep(0.01)


def running(coroutines: set[str]) -> list[asyncio.Task[Any]]:
    """The tasks still running one of ``coroutines`` (by qualified name)."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") in coroutines
    ]
