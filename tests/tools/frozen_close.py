"""A close bounded against a frozen server (a pool's, a connection's, a feed's, a watch's), run
as the close-while-frozen tests run it: the server thawed just before or long after the bound,
what the close logged captured, and how long it took measured."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from structlog.testing import capture_logs

from tests.freeze import thaw_later


@dataclass(frozen=True)
class FrozenClose:
    """What a close did while the server was frozen."""

    logs: list[MutableMapping[str, Any]]
    took: float  # seconds from the close's call to its return

    def logged(self, event: str) -> int:
        """How many lines of the close's log say ``event``."""
        return sum(1 for line in self.logs if line["event"] == event)


async def close_while_frozen(
    close: Awaitable[object],
    what: str,
    *,
    patience: float,
    thaw_in: float | None = None,
    pids: Sequence[int] = (),
) -> FrozenClose:
    """Await ``close`` (a close's coroutine, or a task told to stop just before) while the
    server is frozen, thawing ``pids`` ``thaw_in`` seconds from now (never, if None), and wait
    ``patience`` seconds at most for it to return. Fails naming ``what`` if it has not (it
    waited for the frozen server past its bound), once the close it cancels has ended (1 s at
    most). The pending thaw is cancelled on the way out, so that it cannot cut a later freeze of
    the same process short; the caller still thaws what it froze, whatever happens."""
    thawing = thaw_later(thaw_in, *pids) if thaw_in is not None else None
    try:
        began = time.monotonic()
        with capture_logs() as logs:
            closing = asyncio.ensure_future(close)
            done, _ = await asyncio.wait({closing}, timeout=patience)
        took = time.monotonic() - began
        if not done:
            closing.cancel()
            # Its cancellation runs before the thaw is cancelled and the caller thaws: a
            # close left cancelling would go on in a later test of the session's loop.
            await asyncio.wait({closing}, timeout=1)
        assert done, f"{what} waited for a frozen server past its bound"
        closing.result()
        return FrozenClose(logs, took)
    finally:
        if thawing is not None:
            thawing.cancel()
