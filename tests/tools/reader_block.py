"""The event loop held inside an I/O callback: the reader of a socket pair of the test's own,
made readable when the test says, runs the test's steps (a block of the loop) there.

Where a block happens matters under uvloop: libuv runs the timers due by the end of a block in
an I/O callback before it polls its sockets again, whereas after a block in a ``call_soon``
callback it polls first. A block that ``call_soon`` schedules cannot show what the first does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable, Iterator


class ReaderBlock:
    """A socket pair whose reader, on the running loop, runs the steps given to
    ``at_next_poll``; ``close`` removes the reader."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ours, self._theirs = socket.socketpair()
        # Both ends non-blocking: a send never holds up the loop. The pair never fills (one byte
        # a step, all read at the next poll); were it to, the send would raise, not hang.
        self._ours.setblocking(False)
        self._theirs.setblocking(False)
        self._steps: deque[Callable[[], None]] = deque()
        self._loop.add_reader(self._ours, self._run_steps)

    def at_next_poll(self, step: Callable[[], None]) -> None:
        """Run ``step`` inside the reader's I/O callback, at the loop's next poll of its
        sockets (never within the current callback)."""
        self._steps.append(step)
        self._theirs.send(b"!")

    def _run_steps(self) -> None:
        try:
            self._ours.recv(4096)
        except BlockingIOError:  # woken with nothing to read: the steps wait for their byte
            return
        while self._steps:
            self._steps.popleft()()

    def close(self) -> None:
        self._loop.remove_reader(self._ours)
        self._ours.close()
        self._theirs.close()


@contextlib.contextmanager
def reader_block() -> Iterator[ReaderBlock]:
    """A ``ReaderBlock`` on the running loop for the ``with`` block, its reader removed after."""
    block = ReaderBlock()
    try:
        yield block
    finally:
        block.close()
