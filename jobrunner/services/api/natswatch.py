"""Telling when NATS stops answering the API, so that its live viewers are told too.

A frozen or cut-off NATS server sends nothing and reports no error: the live feeds just go
quiet, like a job that prints nothing, and nats-py's own pings (every 120 s by default) notice
only minutes later. So one probe per API process sends a message to itself through the server:
it subscribes once to a subject of its own (``Names.api_probe_subject``), publishes a counter
each round and waits for that counter to come back. One not back within ``silence_seconds``
makes NATS silent; the next back in time, not silent. Viewers are told of each change
(``Fanout.tell_nats_silence``), not polled: a thousand cost one probe.

Why a message to itself (not a PING, not a request): ``common.echoprobe``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS

from jobrunner.common import stopping
from jobrunner.common.echoprobe import EchoProbe

log = structlog.get_logger()

# Probes per silence bound: NATS is found silent at most a third of the bound after it is due.
PROBES_PER_BOUND = 3


class NatsWatch:
    """Probes ``nc`` and calls each of ``listeners`` with ``silent`` at every change."""

    def __init__(self, nc: NATS, subject: str, silence_seconds: float) -> None:
        self._echo = EchoProbe(nc, subject)  # subject: this process's alone
        self.silence_seconds = silence_seconds
        self.silent = False
        self.answers = 0  # probes answered so far (a figure for tests)
        self.listeners: list[Callable[[bool], None]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe_forever(), name="nats-watch")

    async def stop(self, within: float | None = None) -> None:
        if self._task is not None:
            await stopping.end_loop(self._task, self._stop, within)

    async def _probe_forever(self) -> None:
        await self._echo.open()
        try:
            interval = self.silence_seconds / PROBES_PER_BOUND
            loop = asyncio.get_running_loop()
            while not self._stop.is_set():
                # Paced from the start of each probe: one unanswered took the whole bound, so
                # the next goes at once and the thaw is seen as soon as the server answers.
                started = loop.time()
                answered = await self._echo.came_back(self.silence_seconds)
                self.answers += answered
                self._tell(silent=not answered)
                await stopping.pause(self._stop, max(0.0, interval - (loop.time() - started)))
        finally:
            await self._echo.close()

    def _tell(self, silent: bool) -> None:
        if silent == self.silent:
            return
        self.silent = silent
        if silent:
            log.warning("nats does not answer: live viewers are told", bound=self.silence_seconds)
        else:
            log.info("nats answers again: live viewers are told")
        for listener in self.listeners:
            listener(silent)
