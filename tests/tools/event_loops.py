"""The event loops jobrunner runs on, for a test that must hold on each: asyncio's own
(`jobrunner replay`, the CLI's commands) and uvloop's (the services: the projector and its
rebuild, the API, the runner).

They differ where a test of timing around I/O looks: libuv runs due timers at the end of each
pass, right after a block inside an I/O callback, whereas asyncio's loop polls its sockets first.
A test parametrized over ``LOOPS`` runs its coroutine with ``run_on``, on a loop of its own, not
pytest-asyncio's (which is asyncio's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run_on(loop_name: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on a new event loop of the kind ``loop_name`` (a key of
    ``LOOPS``), closed after it."""
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(coro)
