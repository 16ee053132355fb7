"""When a lock's queue head is an orphan: its entry is on the lock board, and its job's
``JobRequested`` has been missing from the stream for ``queue_orphan_seconds``. The API keeps an
entry after a publish whose outcome it could not know (a lost ack, its own death in between),
and the request may never be stored. One definition for the runner's two droppers: a queued
job waiting behind the head (``SlotClaimer``) and the periodic sweep (``LostJobSweeper``); they
share one instance, so a head's age counts from whichever looked first.

The age is counted on this runner's monotonic clock, never from the API's ``queued_at`` (another
host's wall clock: ahead of the runner's by more than the age, a live head would be dropped at
once and the jobs behind it run first; behind, an orphan would block the lock for longer).

It counts from the first look that found the request missing, and each look's time is taken
when the look is sent, not when its answer comes: the server reads the look no earlier, and an
answer held up on its way back (a NATS node relaying it paused, this runner's loop stalled on a
loaded host) may arrive after the request was stored meanwhile. So a look sent the age after the
first and answered "missing" means the request was not stored within the age of the entry
(which is stored before this runner can see it): what ``queue_orphan_seconds`` bounds (see
``QUEUE_ORPHAN_MIN_SECONDS``). Time the server spent paused does count: the API's timeouts run
through it too. A look NATS ended (a timeout, no JetStream) restarts every age: a request whose
publish was given up in the outage may still be stored when NATS answers again.

Every job waiting behind a head checks it again and again (``SlotClaimer``): the looks of one
head (one revision of it) in flight at once are one look, whose answer (or error) each of them
takes. Only while it is in flight: a check after it has ended looks again, and a check of a new
revision does not take a look sent before that revision was there (its age would start early).
The same for the claimer's first question of a head, whether its job started or ended already
(``has_started``): a status, once past pending, never goes back, so an answer sent a moment
before a check asked is at worst a recheck late.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog
from nats.js.errors import KeyWrongLastSequenceError

from jobrunner.common import retry
from jobrunner.common.slots import QueueEntry, SlotTable, slot_key
from jobrunner.contracts.events import JobStatus
from jobrunner.services.runner.journal import JobJournal

log = structlog.get_logger()
T = TypeVar("T")
# A head: its job id and the revision of its queue entry the board saw.
HeadKey = tuple[str, int]


@dataclass
class _Head:
    """A lock's queue head as this runner knows it: its request found stored (not looked up
    again), or since when (the monotonic clock, at a look's send) it has been found missing."""

    job_id: str
    revision: int
    stored: bool = False
    missing_since: float | None = None


@dataclass
class _Look(Generic[T]):
    """A look at a head in flight, and how many checks are waiting for it."""

    task: asyncio.Future[T]
    waiters: int = 0


class _SharedLooks(Generic[T]):
    """One look in flight per head, shared by the checks of it; one waiter's cancel leaves the
    look to the others, the last one's cancels it."""

    def __init__(self) -> None:
        # By revision too: a look sent before a head's new revision existed must not start
        # that revision's age.
        self._looks: dict[HeadKey, _Look[T]] = {}

    async def take(self, head: HeadKey, look: Callable[[], Awaitable[T]]) -> T:
        """The look in flight at ``head``, or a new one (``look()``): its answer or error."""
        shared = self._looks.get(head)
        if shared is None or shared.task.done():  # an ended look's answer is not taken again
            shared = self._looks[head] = _Look(asyncio.ensure_future(look()))
            shared.task.add_done_callback(lambda task: self._forget(head, task))
        shared.waiters += 1
        try:
            return await asyncio.shield(shared.task)
        finally:
            shared.waiters -= 1
            if shared.waiters == 0:
                # Forgotten before it is cancelled: the cancel takes effect at the look's next
                # step, and a check coming before that must start a look of its own, not wait
                # for this one (its shield would raise the cancel in a task nobody cancelled).
                self._forget(head, shared.task)
                shared.task.cancel()  # no-op once it has ended

    def _forget(self, head: HeadKey, task: asyncio.Future[T]) -> None:
        shared = self._looks.get(head)
        if shared is not None and shared.task is task:
            del self._looks[head]


class QueueOrphans:
    def __init__(self, slots: SlotTable, journal: JobJournal, orphan_seconds: float) -> None:
        self.slots = slots
        self.journal = journal
        self.orphan_seconds = orphan_seconds  # settings.queue_orphan_seconds
        # Each lock's head as last looked at (by lock key).
        self._heads: dict[str, _Head] = {}
        # The looks in flight for each head's request and for its status, shared by its checks.
        self._request_looks: _SharedLooks[tuple[float, bool]] = _SharedLooks()
        self._status_looks: _SharedLooks[bool] = _SharedLooks()
        # Ages found missing before this (the monotonic clock) count again from the next look.
        self._restarted_at = -float("inf")

    async def drop_if_orphan(self, lock: str, revision: int, entry: QueueEntry) -> bool:
        """Drop ``entry``, the head of ``lock``'s queue at ``revision`` as the board saw it, if
        it is an orphan (True). The delete names the revision: the job queued again meanwhile
        (not on the board yet) is a new entry with its own age, and stays."""
        # The board's key for the lock (``key_safe``): the claimer names the lock as the job
        # did, the sweep as the board does, and both must find the one head.
        lock_key = slot_key(lock, entry.job_id)
        if not await self.is_orphan(lock_key, revision, entry.job_id):
            return False
        log.info(
            "dropping a queue entry whose job was never stored",
            dead_job_id=entry.job_id,
            missing_for=round(self._missing_for(lock_key), 1),
        )
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self.slots.dequeue(lock, entry.job_id, revision)
        return True

    async def is_orphan(self, lock_key: str, revision: int, job_id: str) -> bool:
        """Has the head (``job_id`` at ``revision``) of ``lock_key``'s queue had its request
        missing for the age? Each call waits for a look: the one in flight for this revision of
        the head (shared with the other checks), else a new one; none once the request was
        found."""
        head = self._heads.get(lock_key)
        if head is None or (head.job_id, head.revision) != (job_id, revision):
            head = self._heads[lock_key] = _Head(job_id, revision)
        if head.stored:
            return False
        sent_at, stored = await self._request_looks.take(
            (job_id, revision), lambda: self._look(job_id)
        )
        if stored:
            head.stored = True
            return False
        if head.missing_since is None or head.missing_since < self._restarted_at:
            # The first look, or the first since NATS ended one (a look sent before the
            # restart and answered after it starts nothing: its age restarts next time).
            head.missing_since = sent_at
        return sent_at - head.missing_since >= self.orphan_seconds

    async def has_started(self, job_id: str, revision: int) -> bool:
        """Has the head (``job_id`` at ``revision``) started or ended? It should then have left
        its queue. One status read in flight per head, shared by its checks."""
        return await self._status_looks.take((job_id, revision), lambda: self._status_look(job_id))

    async def _status_look(self, job_id: str) -> bool:
        status = await self.journal.last_status(job_id)
        return status is not None and status.status != JobStatus.PENDING

    async def _look(self, job_id: str) -> tuple[float, bool]:
        """When the look was sent, and whether the head's request is stored."""
        sent_at = time.monotonic()
        try:
            stored = await self.journal.last_event(job_id, "requested") is not None
        except Exception as exc:
            if retry.is_transient(exc):
                self.restart()
            raise
        return sent_at, stored

    def _missing_for(self, lock_key: str) -> float:
        since = self._heads[lock_key].missing_since
        return 0.0 if since is None else time.monotonic() - since

    def restart(self) -> None:
        """NATS ended a look: every head's age counts again from its next look."""
        self._restarted_at = time.monotonic()

    def keep_only(self, lock_keys: Collection[str]) -> None:
        """Forget the heads of the locks not in ``lock_keys`` (their queues emptied)."""
        kept = set(lock_keys)
        for lock_key in [key for key in self._heads if key not in kept]:
            del self._heads[lock_key]
