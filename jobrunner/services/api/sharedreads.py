"""One read at a time per key, shared by every caller that asks while it runs (single flight).

Two thousand viewers opening one job's stream at once arrive before its feed keeps the job's
row (``Fanout.known_row``): each read the same row, and those reads queued for the API's ten
pooled connections. A read costs a connection a few turns of the event loop, and a loop busy
with two thousand connections turns slowly, so the queue took tens of seconds to drain
(bench/RESULTS.md, "Joining viewers, session 19"). Sharing the read in flight makes it one.

Only a read in flight is shared, never a finished one: a caller that asks after it ended reads
anew. A caller that joins a read may get a result read from just before it asked: callers use
this only for what does not change (a job's first sequence, who requested it; see
``routes/streams.py``). A read that fails fails only the caller that started it: each caller that
joined reads again on its own, so one lost connection does not fail every viewer at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from jobrunner.services.api.readpool import ReadModelsTimeout

T = TypeVar("T")


class SharedReads(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T]] = {}

    async def read(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        """``read()``'s result, from the read of ``key`` in flight if there is one. A caller
        that goes away does not cancel the read for the others."""
        flight = self._flights.get(key)
        if flight is None or flight.done():
            flight = asyncio.ensure_future(read())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
            return await asyncio.shield(flight)
        try:
            return await asyncio.shield(flight)
        except ReadModelsTimeout:
            # Postgres did not answer the read this caller joined within the deadline: a read
            # of its own would wait as long again before the same answer.
            raise
        except Exception:
            # The read joined failed (its error is its starter's): this caller reads itself.
            return await read()

    def _landed(self, key: str, flight: asyncio.Future[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # seen here, so that a read every caller left logs no error

    def __len__(self) -> int:
        """Reads in flight."""
        return len(self._flights)
