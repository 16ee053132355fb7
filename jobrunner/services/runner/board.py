"""The runner's view of the lock bucket, kept current by one watcher over its leases and queues.

It knows each slot's lease value (so that when a lease expires, the runner knows whose job and
which process group it was) and each lock's queue: queued jobs waiting for a slot, ordered by the
revision at which they entered the queue, which is submission order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.js.kv import KV_PURGE, KeyValue

from jobrunner.common import keywatch, retry, subscription
from jobrunner.common.slots import QueueEntry, SlotValue, Unreadable, key_safe

log = structlog.get_logger()

OnExpired = Callable[[SlotValue], Awaitable[None]]

# The keys the board reads: leases (a lock's slot, or a job's own) and queue places. Not the
# running jobs' records (``run.``: read by the sweep from the server) nor the runners' give-back
# barriers (``fence.``), whose writes and markers every runner's watch was handed to drop.
WATCHED_KEYS = ("slot.>", "job.>", "queue.>")


class UnreadableEntry(ValueError):
    """A lock bucket key or value of a shape jobrunner does not write."""


class LockBoard:
    def __init__(self, end_within: float = keywatch.END_SECONDS) -> None:
        # How long ending the watch (at a stop, or after a failure) waits for its unsubscribe.
        self._end_within = end_within
        self.slots: dict[str, SlotValue] = {}
        # lock key ("slot.<lock>") -> {job_id: (revision, entry)}
        self.queues: dict[str, dict[str, tuple[int, QueueEntry]]] = {}
        self.ready = asyncio.Event()
        self._changed: dict[str, asyncio.Event] = {}
        # Keys whose entry could not be read, said now and then (until one can be read again).
        self._unreadable = Unreadable()

    # --- reading
    def head(self, lock_key: str) -> QueueEntry | None:
        first = self.first(lock_key)
        return None if first is None else first[1]

    def first(self, lock_key: str) -> tuple[int, QueueEntry] | None:
        """The head of the lock's queue with its revision (its place)."""
        queue = self.queues.get(lock_key)
        if not queue:
            return None
        return min(queue.values(), key=lambda item: item[0])

    def queued(self, lock_key: str, job_id: str) -> bool:
        return job_id in self.queues.get(lock_key, {})

    async def wait_change(self, lock_key: str, timeout: float) -> None:
        """Until the slot or the queue of ``lock_key`` changes (or ``timeout``)."""
        event = self._changed.setdefault(lock_key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _touch(self, lock_key: str) -> None:
        event = self._changed.pop(lock_key, None)
        if event is not None:
            event.set()

    # --- feeding
    def _apply(self, key: str, value: bytes | None, operation: str | None, revision: int) -> None:
        try:
            self._apply_entry(key, value, operation, revision)
        except (msgspec.DecodeError, UnreadableEntry) as exc:
            # Not written by jobrunner (a hand-made put, another version's value or key): skipped,
            # not a failure. A failing watch restarts and replays the bucket from scratch, and
            # would meet the same entry again every time, for as long as it stays there. Said
            # now and then per key, not per delivery: a replay delivers it again, and a busy key
            # again and again.
            if self._unreadable.due(key):
                log.warning("lock bucket entry cannot be read: ignored", key=key, error=str(exc))
            return
        self._unreadable.readable(key)

    def _apply_entry(
        self, key: str, value: bytes | None, operation: str | None, revision: int
    ) -> None:
        kind, _, rest = key.partition(".")
        if kind == "queue":
            self._apply_queued(key, rest, value, operation, revision)
            return
        if kind not in ("slot", "job") or not rest:
            raise UnreadableEntry("not a key jobrunner writes")
        try:
            if operation is None and value:
                self.slots[key] = msgspec.json.decode(value, type=SlotValue)
            else:
                self.slots.pop(key, None)
        except msgspec.DecodeError:
            self.slots.pop(key, None)  # what it replaced is gone all the same
            raise
        finally:
            self._touch(key)

    def _apply_queued(
        self, key: str, rest: str, value: bytes | None, operation: str | None, revision: int
    ) -> None:
        # queue.<lock>.<job>: both parts key-safe (no dots), so the job part is the rest.
        lock, _, job = rest.partition(".")
        if not lock or not job:
            raise UnreadableEntry("a queue key names a lock and a job")
        lock_key = "slot." + lock
        queue = self.queues.setdefault(lock_key, {})
        self._touch(lock_key)
        if operation is None and value:
            try:
                entry = msgspec.json.decode(value, type=QueueEntry)
                if _safe(entry.job_id) != job:
                    # Kept by job id, removed by key: an entry naming another job than its key
                    # would never leave the queue, and hold up every job behind it.
                    raise UnreadableEntry("the entry names another job than its key")
            except (msgspec.DecodeError, UnreadableEntry):
                _drop(queue, job)  # what it replaced is gone all the same
                raise
            queue[entry.job_id] = (revision, entry)
        else:
            _drop(queue, job)

    async def watch(
        self,
        kv: KeyValue,
        stop: asyncio.Event,
        on_expired: OnExpired,
        first: KeyValue.KeyWatcher | None = None,
    ) -> None:
        """Follow the ``WATCHED_KEYS``; ``on_expired`` gets the value of a lease whose TTL ran out.
        ``first``: the watch to follow first (the runner's start opens it, ``open_watch``)."""
        while not stop.is_set():
            try:
                # The start's watch the first time round; after a failure, a new one.
                if first is not None:
                    watcher, first = first, None
                else:
                    watcher = await keywatch.watch_keys(kv, WATCHED_KEYS)
                # A (re)started watch replays the current state from scratch. A waiter acts only
                # once its own queue entry is back, and replay runs in revision order, so a
                # half-replayed queue never names the wrong head.
                self.slots.clear()
                self.queues.clear()
                # Each entry taken as it comes: ``updates(timeout=...)`` wraps every one in
                # ``wait_for`` (a task and a timer per entry, five entries a job, six on a
                # lock). ``stop`` ends the iteration by stopping the watcher instead.
                stopping = asyncio.ensure_future(_stop_at(stop, watcher, self._end_within))
                try:
                    async for entry in watcher:
                        if entry is None:
                            self.ready.set()
                            continue
                        previous = self.slots.get(entry.key)
                        self._apply(entry.key, entry.value, entry.operation, entry.revision or 0)
                        if self.ready.is_set() and entry.operation == KV_PURGE and previous:
                            await on_expired(previous)
                finally:
                    # Ended by _stop_at only if it ran to its end: a stop set after the watch
                    # failed (or while _stop_at's end_watch was under way) finds it cancelled.
                    ended = stopping.done() and not stopping.cancelled()
                    stopping.cancel()
                    if not ended:
                        await keywatch.end_watch(watcher, self._end_within)
            except asyncio.CancelledError:
                raise
            except keywatch.WatchLostMessages:
                # A gap in what the board knows: watched again at once, from the bucket's new
                # current state (``keywatch`` logged it).
                continue
            except Exception as exc:
                log.warning("lock watch failed, restarting", error=repr(exc))
                await asyncio.sleep(1.0)


async def open_watch(kv: KeyValue) -> KeyValue.KeyWatcher:
    """The board's watch (``WATCHED_KEYS``), as a start step (``retry.until_jetstream_ready``):
    its consumer's create waits the start's short timeout (a stream just created answers nothing
    until its replicas elect a leader) and is safe to send again: a consumer made after its try
    gave up has no subscriber, and the server removes it after its inactive threshold
    (``keywatch.INACTIVE_THRESHOLD``, nats-py's KV watch default, 5 minutes; until then an idle
    consumer, nothing delivered to anyone). The watch then goes on on ``kv``'s own context (its
    consumer made again after a reconnect)."""
    watcher = await keywatch.watch_keys(retry.start_bucket(kv), WATCHED_KEYS)
    assert watcher._sub is not None  # set by ``watch_keys``
    subscription.keep_on(watcher._sub, kv._js)
    return watcher


async def _stop_at(stop: asyncio.Event, watcher: KeyValue.KeyWatcher, within: float) -> None:
    """End the watch at ``stop``, its unsubscribe bounded (``keywatch.end_watch``: nats-py's
    ``KeyWatcher.stop`` waited for it unbounded, a frozen NATS holding the watch past the
    runner's stop); its iteration ends whatever the unsubscribe met (a subscription gone with
    the connection already, say)."""
    await stop.wait()
    await keywatch.end_watch(watcher, within)


def _safe(job_id: str) -> str:
    return key_safe(job_id)


def _drop(queue: dict[str, tuple[int, QueueEntry]], job: str) -> None:
    """Take the job whose key part is ``job`` out of ``queue``."""
    for job_id in [j for j in queue if _safe(j) == job]:
        del queue[job_id]
