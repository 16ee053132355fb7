"""The projector notices when it is stalled and says so in its log: the stream holds events past
its checkpoint and none has arrived for ``projector_stuck_seconds`` (a reader that hangs without an
error looks exactly like an idle stream from inside the loop). ``GET /health`` reports the same
condition from outside, by the age of the oldest waiting event."""

from __future__ import annotations

import time

import structlog
from nats.js import JetStreamContext

log = structlog.get_logger()


class StallWatch:
    """Fed with the checkpoint after every batch and polled while no batch arrives."""

    def __init__(self, js: JetStreamContext, stream: str, stuck_after: float) -> None:
        self._js = js
        self._stream = stream
        self.stuck_after = stuck_after
        self._checkpoint = 0
        self._moved_at = time.monotonic()
        self._next_look = 0.0
        self.stalled = False

    def progressed(self, checkpoint: int) -> None:
        if checkpoint != self._checkpoint:
            self._checkpoint = checkpoint
            self._moved_at = time.monotonic()
            if self.stalled:
                log.info("projector moves again", checkpoint=checkpoint)
            self.stalled = False

    async def idle(self) -> None:
        """Called when a fetch returned nothing: look at the stream's end now and then."""
        now = time.monotonic()
        if now < self._next_look or now - self._moved_at <= self.stuck_after:
            return
        self._next_look = now + max(self.stuck_after / 2, 0.5)
        try:
            stream_last = (await self._js.stream_info(self._stream)).state.last_seq
        except Exception as exc:
            log.warning("projector cannot see the stream's end", error=repr(exc))
            return
        if is_stalled(self._checkpoint, stream_last, now - self._moved_at, self.stuck_after):
            self.stalled = True
            log.error(
                "projector stalled: events wait in the stream but none arrives",
                checkpoint=self._checkpoint,
                stream_last_seq=stream_last,
                seconds_without_progress=round(now - self._moved_at, 1),
            )


def is_stalled(checkpoint: int, stream_last: int, idle_seconds: float, stuck_after: float) -> bool:
    """Events wait past the checkpoint and nothing moved for longer than ``stuck_after``."""
    return stream_last > checkpoint and idle_seconds > stuck_after
