"""The projector's lag for ``/metrics``: events in the stream past its checkpoint.

A scrape never asks NATS: the stream's end is looked up every ``LOOK_INTERVAL`` seconds by a
task of the projector, each look with a deadline, and the gauges are computed from the last value
seen. While NATS is away the lag keeps its last known value (and the checkpoint does not move
either, since nothing arrives), and ``jobrunner_projector_lag_age_seconds`` grows.

The gauges come from a collector that only a process running a projector registers (on import of
this module), so no other service reports a projector lag of 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

import structlog
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric

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

    def events_behind(self) -> int:
        return max(0, self.stream_last - self.checkpoint)

    def progressed(self, checkpoint: int) -> None:
        moved = checkpoint - self.checkpoint
        if moved > 0 and self._started:
            metrics.PROJECTOR_APPLIED.inc(moved)
        self.checkpoint, self._started = checkpoint, True

    def publish(self) -> None:
        """Make /metrics read this projector's figures (computed at scrape, no I/O)."""
        _COLLECTOR.current = self

    async def follow(self, js: JetStreamContext, stream: str, stop: asyncio.Event) -> None:
        """Look at the stream's end now and then until ``stop``."""
        while not stop.is_set():
            try:
                # Wall time on purpose: a miss only keeps the last value of a metric.
                info = await asyncio.wait_for(js.stream_info(stream), LOOK_TIMEOUT)
            except Exception as exc:  # NATS away: keep the last value
                log.debug("projector lag: cannot see the stream's end", error=repr(exc))
            else:
                self.stream_last = info.state.last_seq
                self.looked_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOOK_INTERVAL)


class _LagCollector:
    def __init__(self) -> None:
        self.current: Lag | None = None

    def collect(self) -> Iterable[Metric]:
        lag = self.current
        if lag is None:
            return
        yield GaugeMetricFamily(
            "jobrunner_projector_lag_events",
            "Events in the stream past the projector's checkpoint (as of its last look).",
            value=lag.events_behind(),
        )
        yield GaugeMetricFamily(
            "jobrunner_projector_lag_age_seconds",
            "Seconds since the projector last saw the stream's end (grows while NATS is away).",
            value=time.monotonic() - lag.looked_at,
        )
        yield GaugeMetricFamily(
            "jobrunner_projector_checkpoint",
            "The last stream sequence the projector applied.",
            value=lag.checkpoint,
        )


_COLLECTOR = _LagCollector()
REGISTRY.register(_COLLECTOR)
