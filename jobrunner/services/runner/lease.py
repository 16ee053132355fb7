"""Keeping a running job's slot lease: renewed every third of the TTL until the job ends.

A renewal is conditional on the revision last written, so once the lease expired and another
runner took the slot, renewing fails and ``lost`` is set: the job is stopped (the fence).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from jobrunner.common.slots import Lease, SlotTable, SlotValue

log = structlog.get_logger()

# How long the keeper may take to notice it should stop (it may be inside a NATS call).
KEEPER_STOP_SECONDS = 10.0


class LeaseKeeper:
    def __init__(
        self,
        slots: SlotTable,
        lease: Lease,
        ttl_seconds: float,
        after_renewal: Callable[[], Awaitable[None]],
    ) -> None:
        self.slots = slots
        self.lease = lease
        self.interval = max(0.3, ttl_seconds / 3)
        self.lost = asyncio.Event()
        self._after_renewal = after_renewal
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def rewrite(self, value: SlotValue) -> None:
        """Renew with a new value (the tool's process group, once it started)."""
        self.lease = await self.slots.renew(self.lease, value) or self.lease

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name=f"lease-{self.lease.key}")

    async def stop(self) -> Lease:
        """Stop renewing; returns the lease as last renewed."""
        # Stopped by an event, not by cancel(): a cancel that lands inside a NATS request can be
        # swallowed there, and then the keeper would run (and the job wait) forever.
        self._stop.set()
        if self._task is not None:
            _, still_running = await asyncio.wait({self._task}, timeout=KEEPER_STOP_SECONDS)
            if still_running:
                self._task.cancel()
        return self.lease

    async def _keep(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            if self._stop.is_set():
                return
            try:
                renewed = await self.slots.renew(self.lease)
            except Exception as exc:
                log.warning("lease renewal failed, retrying", error=repr(exc))
                continue
            if renewed is None:
                log.error("lease lost: stopping the tool")
                self.lost.set()
                return
            self.lease = renewed
            try:
                await self._after_renewal()
            except Exception as exc:
                log.warning("check after lease renewal failed", error=repr(exc))
