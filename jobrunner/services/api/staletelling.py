"""Telling the viewer of a stream that waits on a reader of its own (``/api/jobs/stream``)
that NATS went silent, or answers again (SSE ``stale``), as soon as the API's watch says so.

A job's stream is woken by its feed (``Fanout.tell_nats_silence``). The all-jobs stream waits
on its own reader, which a silent NATS leaves waiting: until its keep-alive interval (15 s by
default) at best, for good if its reader is inside a request to the frozen server. So its wait
is raced against the watch's next change (``StaleTeller.between``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from jobrunner.services.api import sse
from jobrunner.services.api.fanout import Fanout

T = TypeVar("T")


class Woken:
    """What ``StaleTeller.between`` yields when its ``wake`` event was set (``WOKEN``)."""


WOKEN = Woken()


class StaleTeller:
    """What one viewer was last told of NATS, and its reads with the changes between them."""

    def __init__(self, fanout: Fanout) -> None:
        self._fanout = fanout
        self._changed = asyncio.Event()  # set by the fanout at each change of NATS's state
        self.told_silent = False

    @property
    def changed(self) -> asyncio.Event:
        """Set at each change of NATS's state until ``news`` is next asked: a wait other than
        ``between``'s (the all-jobs stream's for the projector) ends on it to tell the viewer."""
        return self._changed

    def news(self) -> bytes | None:
        """The ``stale`` frame to send when NATS's state is not what the viewer was told."""
        # Cleared before the look: a change after it sets the event again, and ends the wait.
        self._changed.clear()
        if self.told_silent == self._fanout.nats_silent:
            return None
        self.told_silent = self._fanout.nats_silent
        return sse.stale(self.told_silent)

    async def between(
        self, reads: AsyncIterator[T], wake: asyncio.Event | None = None
    ) -> AsyncGenerator[T | bytes | Woken, None]:
        """The items of ``reads``, and a ``stale`` frame (``bytes``: so ``T`` must not be)
        whenever NATS's state changed, also while a read waits; ``WOKEN`` whenever ``wake`` was
        set (cleared then: the all-jobs stream's probe of Postgres, in a task of its own, says
        so), also while a read waits. A read's error is raised here. Close it before ``reads``:
        a read may be under way, in a task of its own."""
        self._fanout.silence_watchers.add(self._changed)
        pending: asyncio.Future[T] | None = None
        try:
            while True:
                told = self.news()
                if told is not None:
                    yield told
                if wake is not None and wake.is_set():
                    wake.clear()
                    yield WOKEN
                if pending is None:
                    pending = asyncio.ensure_future(anext(reads))
                woken = wake is not None and wake.is_set()
                if not pending.done() and not self._changed.is_set() and not woken:
                    changed = asyncio.ensure_future(self._changed.wait())
                    waits: list[asyncio.Future[Any]] = [pending, changed]
                    if wake is not None:
                        waits.append(asyncio.ensure_future(wake.wait()))
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for wait in waits[1:]:
                            wait.cancel()
                if pending.done():
                    read, pending = pending, None
                    try:
                        yield read.result()
                    except StopAsyncIteration:
                        return
        finally:
            self._fanout.silence_watchers.discard(self._changed)
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
