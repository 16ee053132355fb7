"""The projector's lag for ``/metrics``: events in the stream past its checkpoint.

A scrape never asks NATS: the stream's end is looked up every ``LOOK_INTERVAL`` seconds by a
task of the projector, each look with a deadline, and the gauge is computed from the last value
seen. While NATS is away the gauge keeps the last known lag (and the checkpoint does not move
either, since nothing arrives), and ``jobrunner_projector_lag_age_seconds`` grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.js import JetStreamContext

from jobrunner.common import metrics

log = structlog.get_logger()

LOOK_INTERVAL = 2.0
LOOK_TIMEOUT = 2.0


class Lag:
    def __init__(self) -> None:
        self.checkpoint = 0
        self._started = False  # the first checkpoint is where it starts, not progress
        self.stream_last = 0
        self.looked_at = time.monotonic()

    def events_behind(self) -> float:
        return float(max(0, self.stream_last - self.checkpoint))

    def progressed(self, checkpoint: int) -> None:
        moved = checkpoint - self.checkpoint
        if moved > 0 and self._started:
            metrics.PROJECTOR_APPLIED.inc(moved)
        self.checkpoint, self._started = checkpoint, True
        metrics.PROJECTOR_CHECKPOINT.set(checkpoint)

    def publish(self) -> None:
        """Make the gauges read this projector's values (computed at scrape, no I/O)."""
        metrics.PROJECTOR_LAG.set_function(self.events_behind)
        metrics.PROJECTOR_LAG_AGE.set_function(lambda: time.monotonic() - self.looked_at)

    async def follow(self, js: JetStreamContext, stream: str, stop: asyncio.Event) -> None:
        """Look at the stream's end now and then until ``stop``."""
        while not stop.is_set():
            try:
                info = await asyncio.wait_for(js.stream_info(stream), LOOK_TIMEOUT)
            except Exception as exc:  # NATS away: keep the last value, say so once per look
                log.debug("projector lag: cannot see the stream's end", error=repr(exc))
            else:
                self.stream_last = info.state.last_seq
                self.looked_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOOK_INTERVAL)
