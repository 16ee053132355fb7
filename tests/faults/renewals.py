"""Seeing a running job's lease renewed, from outside the runner: a fault struck right after a
renewal meets the lease at a known age instead of anywhere in its renewal interval."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client as NATS

from jobrunner.contracts.names import Names


async def next_renewal(nc: NATS, names: Names) -> float:
    """When (time.monotonic()) a held lease of the lock bucket was next written: waits for the
    next write of any held slot and returns its moment."""
    kv = await nc.jetstream().key_value(names.locks_bucket)
    watcher = await kv.watch("slot.>", include_history=False)
    try:
        live = False  # the current values come first, then None, then new writes
        async with asyncio.timeout(60):
            while True:
                entry = await watcher.updates(timeout=60)  # type: ignore[no-untyped-call]
                if entry is None:
                    live = True
                elif live and entry.value and b'"held"' in entry.value:
                    return time.monotonic()
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
