"""Publishes a job's lines in batches: whatever has accumulated is sent as soon as the previous
publish is acknowledged, so a lone line goes out at once and a flood goes out in large batches.

Publishing retries forever with the same event id (JetStream drops the duplicate), and the buffer is
bounded: when NATS is away the tool blocks on its own output instead of lines being lost.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog
from nats.js import JetStreamContext

from jobrunner.common import eventstore, retry
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.runner.output import Progress

log = structlog.get_logger()

MAX_BUFFERED_LINES = 50_000
MAX_BUFFERED_BYTES = 16 * 1024 * 1024  # whichever comes first: memory stays bounded
MAX_BATCH_BYTES = 512 * 1024
PROGRESS_INTERVAL = 0.1  # seconds between ProgressReported events while output floods


class LinePublisher:
    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        job_id: str,
        batch_max: int = 1000,
    ) -> None:
        self._js = js
        self._names = names
        self._job_id = job_id
        self._batch_max = batch_max
        self._lines: list[events.LogLine] = []
        self._progress: Progress | None = None
        self._progress_sent: Progress | None = None
        self._progress_at = 0.0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.seq = 0
        self._buffered_bytes = 0
        self.published_lines = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"publisher-{self._job_id}")

    def add(self, stream: str, level: str, text: str, at: datetime) -> None:
        """Buffer a line (plain call: the per-line path stays free of awaits)."""
        self.seq += 1
        self._lines.append(events.LogLine(self.seq, stream, level, at, text))
        self._buffered_bytes += len(text)
        self._wakeup.set()

    async def room(self) -> None:
        """Wait while the buffer is full: the tool then blocks on its own output."""
        if self._full():
            self._room.clear()
            await self._room.wait()

    def _full(self) -> bool:
        return len(self._lines) >= MAX_BUFFERED_LINES or self._buffered_bytes >= MAX_BUFFERED_BYTES

    def report_progress(self, progress: Progress) -> None:
        self._progress = progress
        self._wakeup.set()

    async def close(self) -> None:
        """Publish everything still buffered and stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._lines:
                batch = self._take_batch()
                await self._publish(events.LineLogged(job_id=self._job_id, lines=batch))
                self.published_lines += len(batch)
                self._buffered_bytes -= sum(len(line.text) for line in batch)
                if not self._full():
                    self._room.set()
            progress = self._progress
            if progress is not None and progress != self._progress_sent:
                now = loop.time()
                if self._closing or now - self._progress_at >= PROGRESS_INTERVAL:
                    self._progress_sent, self._progress_at = progress, now
                    await self._publish(
                        events.ProgressReported(
                            job_id=self._job_id,
                            current=progress.current,
                            total=progress.total,
                            percent=progress.percent,
                            phase=progress.phase,
                            message=progress.message,
                        )
                    )
                else:
                    loop.call_later(PROGRESS_INTERVAL, self._wakeup.set)
            if self._closing and not self._lines:
                return

    def _take_batch(self) -> list[events.LogLine]:
        size = 0
        count = 0
        for line in self._lines:
            size += len(line.text) + 64
            count += 1
            if count >= self._batch_max or size >= MAX_BATCH_BYTES:
                break
        batch = self._lines[:count]
        del self._lines[:count]
        return batch

    async def _publish(self, event: events.Event) -> None:
        await publish_with_retry(self._js, self._names, event)


async def publish_with_retry(js: JetStreamContext, names: Names, event: events.Event) -> int:
    """Publish until stored; retries keep the event id so JetStream keeps one copy.

    NATS being away (any length of time) is waited out; a refusal that can never pass raises
    :class:`~jobrunner.common.retry.PublishRefused` at once.
    """
    what = f"event {type(event).__name__} {event.event_id} of job {event.job_id}"
    return await retry.until_done(lambda: eventstore.publish(js, names, event), what)
