"""Telling when NATS stops answering the API, so that its live viewers are told too.

A frozen or cut-off NATS server sends nothing and reports no error: the live feeds just go
quiet, like a job that prints nothing, and nats-py's own pings (every 120 s by default) notice
only minutes later. So one probe per API process asks the server for a round trip: a request to
a subject nobody subscribes to, which the server itself answers at once ("no responders"). One
unanswered for ``silence_seconds`` makes NATS silent; the next answer, not silent. Viewers are
told of each change (``Fanout.tell_nats_silence``), not polled: a thousand cost one probe.

A request rather than nats-py's ``flush`` (a PING): a flush that times out leaves its cancelled
future in nats-py's queue of PONG waiters, and the PONG that comes after the thaw then fails in
its read loop (``InvalidStateError``), which stops reading the connection. A late reply to a
request is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.errors
import structlog
from nats.aio.client import Client as NATS

from jobrunner.common import stopping

log = structlog.get_logger()

# Probes per silence bound: NATS is found silent at most a third of the bound after it is due.
PROBES_PER_BOUND = 3


class NatsWatch:
    """Probes ``nc`` and calls each of ``listeners`` with ``silent`` at every change."""

    def __init__(self, nc: NATS, subject: str, silence_seconds: float) -> None:
        self._nc = nc
        self._subject = subject
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
        interval = self.silence_seconds / PROBES_PER_BOUND
        while not self._stop.is_set():
            answered = await self._probe()
            self.answers += answered
            self._tell(silent=not answered)
            if answered or not self._nc.is_connected:
                # Unanswered while connected took the whole bound already: the next goes at once,
                # so that the thaw is seen as soon as the server answers. A closed or
                # reconnecting connection refuses at once: paced.
                await stopping.pause(self._stop, interval)

    async def _probe(self) -> bool:
        """Did the server answer within ``silence_seconds``?"""
        try:
            await self._nc.request(self._subject, b"", timeout=self.silence_seconds)
        except nats.errors.NoRespondersError:
            return True  # the answer expected: nobody subscribes
        except (nats.errors.Error, TimeoutError, ConnectionError):
            return False
        return True  # someone does subscribe there: an answer all the same

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
