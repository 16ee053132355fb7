"""JetStream's consumer limit met by a reader: tried again, paced, for a bounded time.

A stream (or account) that holds its limit of consumers refuses the next one with err_code
10026. Every API reader is a consumer while it reads (catch-up reads, job feeds, update
streams), so a crowd of viewers arriving at once can meet the limit; a place frees as soon as
one of them ends. Each reader therefore tries again after a short jittered wait, doubling from
``FIRST_WAIT`` to ``LONGEST_WAIT``, for up to its patience; only then does the refusal reach
its caller (whose client gets a clear end and resumes). One pacing for every reader, here.
"""

from __future__ import annotations

import asyncio
import random

from nats.js.errors import BadRequestError

# JetStream's refusal of a new consumer when the stream (or account) holds its limit of them.
MAX_CONSUMERS_REACHED = 10026
FIRST_WAIT = 0.05
LONGEST_WAIT = 1.0


def at_consumer_limit(exc: BaseException) -> bool:
    return isinstance(exc, BadRequestError) and exc.err_code == MAX_CONSUMERS_REACHED


class ConsumerLimitRetry:
    """The waits of one reader's attempts at its consumer: ``wait_after(exc)`` gives how long
    to sleep before the next attempt, or raises ``exc`` when it is not the consumer limit or
    the reader's ``patience`` (seconds from the first attempt) would be over by then."""

    def __init__(self, patience: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._give_up = self._loop.time() + patience
        self._wait = FIRST_WAIT
        self.waits = 0

    def wait_after(self, exc: BaseException) -> float:
        if not at_consumer_limit(exc) or self._loop.time() + self._wait > self._give_up:
            raise exc
        self.waits += 1
        # Jittered: the readers refused together must not all come back together.
        wait = self._wait * random.uniform(0.5, 1.5)
        self._wait = min(self._wait * 2, LONGEST_WAIT)
        return wait
