"""The runner's view of the lock bucket, kept current by one watcher over every key.

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
from nats.errors import BadSubscriptionError, ConnectionClosedError, ConnectionDrainingError
from nats.js.kv import KV_PURGE, KeyValue

from jobrunner.common.slots import QueueEntry, SlotValue, key_safe

log = structlog.get_logger()

OnExpired = Callable[[SlotValue], Awaitable[None]]


class LockBoard:
    def __init__(self) -> None:
        self.slots: dict[str, SlotValue] = {}
        # lock key ("slot.<lock>") -> {job_id: (revision, entry)}
        self.queues: dict[str, dict[str, tuple[int, QueueEntry]]] = {}
        self.ready = asyncio.Event()
        self._changed: dict[str, asyncio.Event] = {}

    # --- reading
    def head(self, lock_key: str) -> QueueEntry | None:
        queue = self.queues.get(lock_key)
        if not queue:
            return None
        return min(queue.values(), key=lambda item: item[0])[1]

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
        except msgspec.DecodeError as exc:
            # Not written by jobrunner (a hand-made put, another version's value): skipped,
            # not a failure. A failing watch restarts and replays the bucket from scratch, and
            # would meet the same entry again every time, for as long as it stays there.
            log.warning("lock bucket entry does not decode: ignored", key=key, error=str(exc))
            if self.slots.pop(key, None) is not None:  # what it replaced is gone all the same
                self._touch(key)

    def _apply_entry(
        self, key: str, value: bytes | None, operation: str | None, revision: int
    ) -> None:
        if key.startswith(("run.", "fence.")):
            # A running job's record (read by the sweep from the server, not from here), or a
            # runner's give-back barrier.
            return
        if key.startswith("queue."):
            lock_key = "slot." + key.split(".")[1]
            queue = self.queues.setdefault(lock_key, {})
            if operation is None and value:
                entry = msgspec.json.decode(value, type=QueueEntry)
                queue[entry.job_id] = (revision, entry)
            else:
                job_id = key.split(".", 2)[2]
                for jid in [j for j in queue if _safe(j) == job_id]:
                    del queue[jid]
            self._touch(lock_key)
            return
        if operation is None and value:
            self.slots[key] = msgspec.json.decode(value, type=SlotValue)
        else:
            self.slots.pop(key, None)
        self._touch(key)

    async def watch(self, kv: KeyValue, stop: asyncio.Event, on_expired: OnExpired) -> None:
        """Follow every key; ``on_expired`` gets the value of a lease whose TTL ran out."""
        while not stop.is_set():
            try:
                watcher = await kv.watchall()
                # A (re)started watch replays the current state from scratch. A waiter acts only
                # once its own queue entry is back, and replay runs in revision order, so a
                # half-replayed queue never names the wrong head.
                self.slots.clear()
                self.queues.clear()
                # Each entry taken as it comes: ``updates(timeout=...)`` wraps every one in
                # ``wait_for`` (a task and a timer per entry, five entries a job, six on a
                # lock). ``stop`` ends the iteration by stopping the watcher instead.
                stopping = asyncio.ensure_future(_stop_at(stop, watcher))
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
                    stopping.cancel()
                    # Stopped already by _stop_at, or its subscription gone with the connection.
                    with contextlib.suppress(*_GONE):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lock watch failed, restarting", error=repr(exc))
                await asyncio.sleep(1.0)


# What ``KeyWatcher.stop`` raises once its subscription is gone: unsubscribed already, or the
# connection closed or draining.
_GONE = (BadSubscriptionError, ConnectionClosedError, ConnectionDrainingError)


async def _stop_at(stop: asyncio.Event, watcher: KeyValue.KeyWatcher) -> None:
    await stop.wait()
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]
    except _GONE:
        # ``stop`` unsubscribes before it queues the end of the iteration, so when that raises the
        # iteration would wait forever: end it here (the queue is bounded: make room if full).
        with contextlib.suppress(asyncio.QueueEmpty):
            if watcher._updates.full():
                watcher._updates.get_nowait()
        watcher._updates.put_nowait(KeyValue.KeyWatcher.STOP_ITER)


def _safe(job_id: str) -> str:
    return key_safe(job_id)
