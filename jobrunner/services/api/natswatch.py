"""Telling when NATS stops answering the API, so that its live viewers are told too.

A frozen or cut-off NATS server sends nothing and reports no error: the live feeds just go
quiet, like a job that prints nothing, and nats-py's own pings (every 120 s by default) notice
only minutes later. So one probe per API process sends a message to itself through the server:
it subscribes once to a subject of its own (``Names.api_probe_subject``), publishes a counter
each round and waits for that counter to come back. One not back within ``silence_seconds``
makes NATS silent; the next back in time, not silent. Viewers are told of each change
(``Fanout.tell_nats_silence``), not polled: a thousand cost one probe.

A message to itself, not a request that the server answers "no responders": any subscriber on
a wildcard that matches (``nats sub '>'``, a monitoring tap) takes such a request and answers
nothing, and every probe would time out. Not nats-py's ``flush`` (a PING) either: a flush that
times out leaves its cancelled future in nats-py's queue of PONG waiters, and the PONG that
comes after the thaw then fails in its read loop (``InvalidStateError``), which stops reading
the connection. A counter that comes back late (an older one) is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jobrunner.common import stopping

log = structlog.get_logger()

# Probes per silence bound: NATS is found silent at most a third of the bound after it is due.
PROBES_PER_BOUND = 3


class NatsWatch:
    """Probes ``nc`` and calls each of ``listeners`` with ``silent`` at every change."""

    def __init__(self, nc: NATS, subject: str, silence_seconds: float) -> None:
        self._nc = nc
        self._subject = subject  # this process's alone: nobody else publishes there
        self.silence_seconds = silence_seconds
        self.silent = False
        self.answers = 0  # probes answered so far (a figure for tests)
        self.listeners: list[Callable[[bool], None]] = []
        self._sent = 0  # the counter of the probe in flight
        self._came_back = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe_forever(), name="nats-watch")

    async def stop(self, within: float | None = None) -> None:
        if self._task is not None:
            await stopping.end_loop(self._task, self._stop, within)

    async def _probe_forever(self) -> None:
        # nats-py subscribes again by itself after a reconnect.
        sub = await self._nc.subscribe(self._subject, cb=self._heard)
        try:
            interval = self.silence_seconds / PROBES_PER_BOUND
            loop = asyncio.get_running_loop()
            while not self._stop.is_set():
                # Paced from the start of each probe: one unanswered took the whole bound, so
                # the next goes at once and the thaw is seen as soon as the server answers.
                started = loop.time()
                answered = await self._probe()
                self.answers += answered
                self._tell(silent=not answered)
                await stopping.pause(self._stop, max(0.0, interval - (loop.time() - started)))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _heard(self, msg: Msg) -> None:
        if msg.data == str(self._sent).encode():
            self._came_back.set()
        # else an older probe's counter, come back after its round gave up: nothing to say.

    async def _probe(self) -> bool:
        """Did the probe come back within ``silence_seconds``?"""
        self._sent += 1
        self._came_back.clear()
        # On the loop's clock, publish included: a publish while reconnecting is only buffered,
        # and a full flusher queue makes it wait.
        deadline = asyncio.get_running_loop().time() + self.silence_seconds
        try:
            async with asyncio.timeout_at(deadline):
                await self._nc.publish(self._subject, str(self._sent).encode())
            # A wait of its own, should nats-py have swallowed the cancel above (end_loop).
            async with asyncio.timeout_at(deadline):
                await self._came_back.wait()
        except (nats.errors.Error, TimeoutError, ConnectionError):
            return False
        return True

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
