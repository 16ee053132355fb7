"""Telling the viewer of a stream that waits on a reader of its own (``/api/jobs/stream``)
that NATS went silent, or answers again (SSE ``stale``), as soon as the API's watch says so.

A job's stream is woken by its feed (``Fanout.tell_nats_silence``). The all-jobs stream waits
on its own reader, which a silent NATS leaves waiting: until its keep-alive interval (15 s by
default) at best, for good if its reader is inside a request to the frozen server. So its wait
is raced against the watch's next change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jobrunner.services.api import sse
from jobrunner.services.api.fanout import Fanout


class StaleTeller:
    """What the viewer was last told of NATS, and a wait that a change of it ends. Registered
    with the fanout from its making until ``close``."""

    def __init__(self, fanout: Fanout) -> None:
        self._fanout = fanout
        self._changed = asyncio.Event()
        self.told_silent = False
        fanout.silence_watchers.add(self._changed)

    def close(self) -> None:
        self._fanout.silence_watchers.discard(self._changed)

    def news(self) -> bytes | None:
        """The ``stale`` frame to send when NATS's state is not what the viewer was told."""
        # Cleared before the look: a change after it sets the event again, and ends the wait.
        self._changed.clear()
        if self.told_silent == self._fanout.nats_silent:
            return None
        self.told_silent = self._fanout.nats_silent
        return sse.stale(self.told_silent)

    async def wait(self, pending: asyncio.Future[Any]) -> None:
        """Until ``pending`` is done or NATS's state changed since the last ``news``."""
        if pending.done() or self._changed.is_set():
            return
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({pending, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
