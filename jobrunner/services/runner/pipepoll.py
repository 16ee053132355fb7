"""The event loop's polling of a tool's pipe, turned off and on (``process._Pipe``).

A busy tool's pipe is unpolled for each rest of its job's publish window and polled again at the
rest's end: about once a message, 2,000 times a second at 100 jobs. asyncio's ``remove_reader``
and ``add_reader`` make a new ``Handle`` and selector key each time and look the fd up through a
``KeyError``: about 9 µs the pair against 4 µs for the selector's own ``unregister`` and
``register`` (2 µs of which are the two ``epoll_ctl`` calls; bench/RESULTS.md, session 33), and
6-10 % of the runner's samples in the 100 jobs x 10 clients row. So on asyncio's selector loop
the pipe's one reader handle is registered with the loop's selector directly, exactly as
``add_reader`` registers it (the loop then runs it as its own reader, and ``remove_reader``
still takes it off); on any other loop (uvloop) the loop's ``add_reader`` and ``remove_reader``
do it.
"""

from __future__ import annotations

import asyncio
import selectors
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Callable


class PipePoll:
    """Polls ``fd`` for reading with ``callback`` while on; starts off."""

    __slots__ = ("_callback", "_fd", "_key_data", "_loop", "_selector")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]):
        self._loop = loop
        self._fd = fd
        self._callback = callback
        selector = getattr(loop, "_selector", None)
        self._selector: selectors.BaseSelector | None = (
            selector
            if isinstance(loop, BaseSelectorEventLoop)
            and isinstance(selector, selectors.BaseSelector)
            else None
        )
        # What ``add_reader`` stores as the key's data: (reader handle, writer handle).
        self._key_data = (asyncio.Handle(callback, (), loop, None), None)

    def on(self) -> None:
        if self._selector is None:
            self._loop.add_reader(self._fd, self._callback)
        else:
            self._selector.register(self._fd, selectors.EVENT_READ, self._key_data)

    def off(self) -> None:
        if self._selector is None:
            self._loop.remove_reader(self._fd)
        else:
            self._selector.unregister(self._fd)
