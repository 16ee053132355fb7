"""The event loop a jobrunner process runs on: libuv's (uvloop) where it is installed, else
asyncio's own.

The projector's loops and the replay's loading are mostly socket reads and writes to NATS and
Postgres; on uvloop each costs a fraction of asyncio's Python transports. One place picks the
loop so the services, the ``jobrunner replay`` command and the bench that measures it all run on
the same one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory where uvloop is installed, else None: asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_factory`` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
