"""JetStream's consumer limit met by a reader: tried again, paced, for a bounded time.

A stream (or account) that holds its limit of consumers refuses the next one with err_code
10026. Every API reader is a consumer while it reads (catch-up reads, job feeds, update
streams), so a crowd of viewers arriving at once can meet the limit; a place frees as soon as
one of them ends. A refused reader therefore tries again, for up to its patience; only then does
the refusal reach its caller (whose client gets a clear end and resumes). One pacing for every
reader, here.

The tries again are paced process-wide, not per reader: a crowd refused together, each backing
off on its own, would still try about as often as there are readers (30 update streams at the
limit made 242 consumer creates in under 5 s). A refused reader waits for the process's one
gate (``_Gate``, first come first served); holding it, it tries again after the gate's pause,
and again, until it gets its consumer (the pause starts again from nothing: the next waiter
tries at once, places free as readers end) or its patience is over. Each refusal doubles the
pause, jittered, from ``FIRST_WAIT`` to ``LONGEST_WAIT``. So at the limit the process makes
about one attempt per pause, whatever the crowd (the holder's last one at the end of its
patience); a reader still waiting for the gate when its patience ends gives up without another
attempt.
"""

from __future__ import annotations

import asyncio
import random
import weakref

from nats.js.errors import BadRequestError

# JetStream's refusal of a new consumer when the stream (or account) holds its limit of them.
MAX_CONSUMERS_REACHED = 10026
FIRST_WAIT = 0.05
LONGEST_WAIT = 1.0


def at_consumer_limit(exc: BaseException) -> bool:
    return isinstance(exc, BadRequestError) and exc.err_code == MAX_CONSUMERS_REACHED


class _Gate:
    """The one turn at a time of the readers refused at the limit (one per event loop)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.pause = 0.0  # before the holder's next attempt
        self.freed_at = 0.0


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gate] = weakref.WeakKeyDictionary()


def _gate_of(loop: asyncio.AbstractEventLoop) -> _Gate:
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = _Gate()
    return gate


class ConsumerLimitRetry:
    """One reader's attempts at its consumer. After a refusal, ``await wait_turn(exc)``: raises
    ``exc`` when it is not the consumer limit or the reader's ``patience`` (seconds from the
    first attempt) is over; otherwise returns when the reader may try again, holding the
    process's gate. ``release(opened)`` gives the gate back (always: in a ``finally``)."""

    def __init__(self, patience: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._give_up = self._loop.time() + patience
        self._gate = _gate_of(self._loop)
        self._holding = False
        self.waits = 0

    async def wait_turn(self, exc: BaseException) -> None:
        gate = self._gate
        if not at_consumer_limit(exc) or self._loop.time() >= self._give_up:
            raise exc
        self.waits += 1
        if self._holding:  # refused at its turn: the next attempts further apart
            gate.pause = min(max(gate.pause * 2, FIRST_WAIT), LONGEST_WAIT)
        else:
            try:
                async with asyncio.timeout_at(self._give_up):
                    await gate.lock.acquire()
            except TimeoutError:
                raise exc from None
            self._holding = True
            if self._loop.time() - gate.freed_at > LONGEST_WAIT:
                gate.pause = FIRST_WAIT  # the gate was idle: a new crowd
        # Jittered: the attempts must not fall into step with the places freeing.
        wait = gate.pause * random.uniform(0.5, 1.5)
        # The last attempt at the end of the patience, not past it.
        await asyncio.sleep(min(wait, self._give_up - self._loop.time()))

    def release(self, opened: bool) -> None:
        if not self._holding:
            return
        self._holding = False
        gate = self._gate
        if opened:
            gate.pause = 0.0  # a place was free: the next waiter tries at once
        gate.freed_at = self._loop.time()
        gate.lock.release()
