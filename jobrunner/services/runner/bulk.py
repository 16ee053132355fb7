"""The runner's bulk connection: a fast path for a flood's large line messages, never the only
path.

A connection's messages are written, and read by nats-server, in order: a quiet job's line
published just after a flood's half megabyte waited for all of it (the noisy-neighbour row), so
those large messages go on a connection of their own. But the lease, the heartbeat and /health
use only the main connection: a stall of the bulk connection alone went unnoticed while a job's
end waited for its last message, so a cancelled job kept running and kept its lock (session 12's
review). Hence:

- a message on the bulk connection is tried once, with an ack timeout of a third of the lease
  TTL; when it is not stored by then (or the connection is away) the publisher sends the same
  event, with the same Nats-Msg-Id, on the main connection until stored: JetStream drops the bulk
  copy should it arrive later (within the stream's duplicate window), and the job's next message
  still leaves only once this one is stored, so order holds;
- after such a failure the lane is out of use until a message it sends to itself on that
  connection comes back (not a PING: see ``_probe_came_back``), so a stalled connection holds
  at most the one message each job had in flight (memory stays bounded) and a flood is not
  held an ack timeout per message.
"""

from __future__ import annotations

import asyncio
import contextvars
import math

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from jobrunner.common import ackinbox, retry, stopping
from jobrunner.common.settings import Settings

log = structlog.get_logger()

# How long the runner's exit waits for the probe beyond its one round after the stop: room for a
# loaded event loop. Past it the probe is left (and logged): the runner's exit goes on.
PROBE_STOP_MARGIN_SECONDS = 2.0


def ack_timeout(settings: Settings) -> float:
    """How long a bulk message may take to be stored before it goes on the main connection: a
    third of the lease TTL (a job's end then waits at most that for its last message), at most
    the usual ack timeout."""
    return min(ackinbox.ACK_TIMEOUT, settings.lease_ttl_seconds / 3)


def connect_options(settings: Settings) -> dict[str, object]:
    """The bulk connection's PINGs: a dead peer is noticed within about the lease TTL (nats-py's
    default is minutes), so that a dead socket and what it still holds are dropped long before
    the stream's duplicate window ends. Not what keeps the lease safe: the fallback above is."""
    return {
        "ping_interval": max(1.0, settings.lease_ttl_seconds / 3),
        "max_outstanding_pings": 2,
    }


class BulkLane:
    """The bulk connection, its ack inbox and whether it is in use."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self.nc = nc
        self._timeout = timeout
        self._acks = ackinbox.AckInbox(nc, timeout)
        self._healthy = True
        self._probe: asyncio.Task[None] | None = None
        # Set before the probe's cancel (``stopping.end_loop``): a cancel that arrives while
        # nats-py flushes is swallowed, and the probe would go on for as long as the stall.
        self._stop = asyncio.Event()
        self._answers: Subscription | None = None  # the probe's inbox, once a probe started
        self._sent = 0  # the counter of the probe in flight
        self._came_back = asyncio.Event()

    def usable(self) -> bool:
        return self._healthy and self.nc.is_connected

    async def publish(self, subject: str, data: bytes, msg_id: str) -> bool:
        """Try to store the message over the bulk connection once; False when the caller must
        send it on the main connection."""
        try:
            await self._acks.publish(subject, data, msg_id)
        except Exception as exc:
            if retry.is_transient(exc):
                self._out_of_use(exc)
            return False  # a refusal: the main connection's publish says what it was
        return True

    def _out_of_use(self, exc: BaseException) -> None:
        if not self._healthy or self._stop.is_set():
            return
        self._healthy = False
        log.warning(
            "bulk connection stalled: large messages go on the main connection",
            error=str(exc) or type(exc).__name__,
        )
        # Not in the job's context (its log fields): the lane is the runner's.
        self._probe = asyncio.create_task(
            self._until_answered(), name="bulk-probe", context=contextvars.Context()
        )

    async def _until_answered(self) -> None:
        if self._answers is None:
            # The probe's own inbox on this connection, kept for later stalls (nats-py
            # subscribes again after a reconnect). A SUB is only buffered, as a publish is.
            try:
                self._answers = await self.nc.subscribe(self.nc.new_inbox(), cb=self._heard)
            except nats.errors.Error as exc:  # closed meanwhile: nothing left to probe
                log.info("bulk probe not started: connection closed", error=repr(exc))
                return
        while not self.nc.is_closed and not self._stop.is_set():
            if await self._probe_came_back() and self.nc.is_connected:
                self._healthy = True
                log.info("bulk connection answers again")
                return
            # Not back in time, or reconnecting (a publish is then only buffered): pause, so
            # that the loop never holds the event loop and probes at most once a timeout.
            await stopping.pause(self._stop, self._timeout)

    async def _heard(self, msg: Msg) -> None:
        if msg.data == str(self._sent).encode():
            self._came_back.set()
        # else an older probe's counter, come back after its round gave up: nothing to say.

    async def _probe_came_back(self) -> bool:
        """Did a message to the probe's inbox come back within the timeout? A message on this
        connection comes back once the server has read everything written before it, as a
        PING's PONG does. Not ``nc.flush`` (a PING): one that times out leaves its cancelled
        future in nats-py's queue of PONG waiters, and the PONG that comes after the thaw then
        fails in nats-py's read loop (``InvalidStateError``), which stops reading the
        connection: the lane was then taken back into use while no ack on it could arrive."""
        assert self._answers is not None
        self._sent += 1
        self._came_back.clear()
        # On the loop's clock, publish included: a full flusher queue makes a publish wait.
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self.nc.publish(self._answers.subject, str(self._sent).encode())
            # A wait of its own, should nats-py have swallowed the cancel above (end_loop).
            async with asyncio.timeout_at(deadline):
                await self._came_back.wait()
        except (nats.errors.Error, TimeoutError, ConnectionError):
            return False
        return True

    async def close(self, within: float = math.inf) -> None:
        """Stop the probe: after at most one probe (its timeout), or the margin past it, or
        ``within`` seconds if less (what the stop has left for it)."""
        self._stop.set()
        if self._probe is not None:
            await stopping.end_loop(
                self._probe,
                self._stop,
                within=min(within, self._timeout + PROBE_STOP_MARGIN_SECONDS),
            )
