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
  connection comes back (not a PING: ``common.echoprobe``), so a stalled connection holds
  at most the one message each job had in flight (memory stays bounded) and a flood is not
  held an ack timeout per message.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NATS

from jobrunner.common import ackinbox, retry, stopping
from jobrunner.common.echoprobe import EchoProbe
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


def connect_options(settings: Settings) -> dict[str, Any]:  # nats-py's options, by name
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
        self._echo: EchoProbe | None = None  # the probe's inbox, once a probe started

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
        if self._echo is None:
            # A message sent to itself on this connection, not a PING (``common.echoprobe``):
            # its inbox kept for later stalls.
            echo = EchoProbe(self.nc, self.nc.new_inbox())
            try:
                await echo.open()
            except nats.errors.Error as exc:  # closed meanwhile: nothing left to probe
                log.info("bulk probe not started: connection closed", error=repr(exc))
                return
            self._echo = echo
        while not self.nc.is_closed and not self._stop.is_set():
            if await self._echo.came_back(self._timeout) and self.nc.is_connected:
                self._healthy = True
                log.info("bulk connection answers again")
                return
            # Not back in time, or reconnecting (a publish is then only buffered): pause, so
            # that the loop never holds the event loop and probes at most once a timeout.
            await stopping.pause(self._stop, self._timeout)

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
