"""The running event loop held by "other work" again and again: a callback that blocks it
``hold`` seconds, then lets it run ``free`` seconds, until the ``with`` block ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator


@contextlib.contextmanager
def loop_held_again_and_again(hold: float, free: float) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    holding = True

    def hold_the_loop() -> None:
        time.sleep(hold)
        if holding:
            loop.call_later(free, hold_the_loop)

    loop.call_later(free, hold_the_loop)
    try:
        yield
    finally:
        holding = False
