"""Keeping a running job's slot lease, and knowing locally when it could have passed to another.

The lease is renewed every sixth of the TTL. Each renewal is conditional on the revision last
written, so once the lease expired and another runner took the slot, renewing is refused and the
job is stopped (the fence).

A runner cut off from NATS cannot learn that, so it keeps a local deadline: the server stored the
last confirmed renewal no earlier than it was sent, so the lease lasts at least until that send
time plus the TTL. At the deadline, ``margin`` before that, the keeper gives the lease up and the
job is stopped, with a grace period short enough (``stop_grace``) that the tool is gone before the
server could let another runner take the slot. A renewal not answered within a short request
timeout is sent again, the earlier attempts still awaited: after an outage the first one sent is
answered first, whatever the runner sent since, so an outage well shorter than the TTL costs
nothing however much the runner has to send once NATS is back.

A runner that stalls itself (stopped, frozen, its event loop blocked) cannot give the lease up
or stop its tool: its guardian process does (guardian.py). The keeper tells it, at the tool's
start and at each confirmed renewal, ``guardian_deadline``: after the keeper's own stop (its
give-up point plus the stop's grace), so a healthy runner acts first, and before the lease can
expire on the server, so the tool is dead before another runner can take the slot.

Why a sixth: an outage (a NATS restart, a cluster's election of the lock bucket's leader) that
starts just before a renewal is due has only the deadline less the renewal interval left, since
the last confirmed renewal is already an interval old. At a third (5 s of a 15 s TTL) that was
6.25 s, shorter than elections seen on a loaded 3-node cluster; at a sixth it is 8.75 s. The
give-up point (the deadline) is unchanged, so the lock still never has two holders; the price is
one small KV write per running job every TTL/6.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from jobrunner.common.slots import Lease, SlotTable, SlotValue

log = structlog.get_logger()

# How long the keeper may take to notice it should stop (at most one renewal request).
KEEPER_STOP_SECONDS = 10.0
# Pause between failed renewal attempts (NATS away): short, the deadline is what bounds them.
RETRY_PAUSE_SECONDS = 0.1
# Renewals per TTL: see the module docstring for why six.
RENEWALS_PER_TTL = 6

LossReason = Literal["refused", "deadline"]


def safety_margin(ttl_seconds: float) -> float:
    """How long before the lease could expire on the server the runner gives it up.

    Half of it is the stop's grace period (SIGTERM to SIGKILL), the other half slack for a
    loaded machine between noticing the deadline and the tool's end.
    """
    return ttl_seconds / 4


def guardian_deadline(sent_at: float, ttl_seconds: float) -> float:
    """When the guardian kills the tool of a lease last confirmed by a renewal sent at
    ``sent_at`` (time.monotonic()): an eighth of the margin after the keeper's stop is over (its
    give-up point, ``margin`` before the expiry, plus a grace of half the margin), so three
    eighths of the margin before the lease can expire on the server (0.28 s of a 3 s TTL, 1.4 s
    of 15 s): the slack for the guardian's wake-up and kill on a loaded machine."""
    return sent_at + ttl_seconds - safety_margin(ttl_seconds) * 3 / 8


def renewal_interval(ttl_seconds: float) -> float:
    """How often a held lease is renewed while nothing fails."""
    return max(0.3, ttl_seconds / RENEWALS_PER_TTL)


def survivable_outage(ttl_seconds: float) -> float:
    """The longest outage a lease survives wherever it starts in a renewal interval: the deadline
    less one interval (the last confirmed renewal may be that old when it starts)."""
    return ttl_seconds - safety_margin(ttl_seconds) - renewal_interval(ttl_seconds)


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
        self.ttl = ttl_seconds
        self.interval = renewal_interval(ttl_seconds)
        self.margin = safety_margin(ttl_seconds)
        # One renewal request may take this long: several fit between two renewals, so one lost
        # request or reply is retried well before the deadline.
        self.request_timeout = min(2.0, max(0.1, ttl_seconds / 10))
        self.lost = asyncio.Event()
        self.reason: LossReason | None = None
        self._value = lease.value
        self._after_renewal = after_renewal
        self._renewed = asyncio.Event()  # set (and replaced) at each confirmed renewal
        self._wake = asyncio.Event()
        self._renew_now = False
        self._along: Callable[[], Awaitable[None]] | None = None  # see rewrite()
        # A renewal attempt failed since the last check after a renewal (NATS was away: a
        # cancel sent meanwhile reached no subscriber).
        self._missed = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._holders: list[Callable[[float], None]] = []  # see hold()

    @property
    def deadline(self) -> float:
        """When (time.monotonic()) the lease is given up unless a renewal is confirmed first."""
        return self.lease.sent_at + self.ttl - self.margin

    def hold(self, until: Callable[[float], None]) -> None:
        """Have ``until`` told the guardian's deadline of the lease now and at each confirmed
        renewal (the tool's group is killed then, should the runner stall: guardian.py)."""
        self._holders.append(until)
        until(guardian_deadline(self.lease.sent_at, self.ttl))

    def stop_grace(self, grace_seconds: float) -> float:
        """The grace period of a stop on a lost lease: within half the safety margin."""
        return min(grace_seconds, self.margin / 2)

    async def confirm(self) -> bool:
        """Is the lease ours right now (confirmed within one renewal interval)? Waits for the
        keeper's next renewal otherwise; False (and ``lost`` set) if none comes in time."""
        while not self.lost.is_set():
            now = time.monotonic()
            if now < self.lease.sent_at + self.interval:
                return True
            if now >= self.deadline:
                self._lose("deadline")
                break
            self._renew_now = True
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renewed.wait(), self.deadline - now)
        return False

    def rewrite(self, value: SlotValue, along: Callable[[], Awaitable[None]] | None = None) -> None:
        """Write a new value (the tool's process group, once it started) at once; every renewal
        after this one carries it too. ``along`` sends what should go out in the same socket
        write as the rewrite (the request's ack): called right after the rewrite is handed to
        the connection, before its flusher runs; never if the keeper stops first."""
        self._value = value
        self._along = along
        self._renew_now = True
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name=f"lease-{self.lease.key}")

    async def stop(self) -> Lease:
        """Stop renewing; returns the lease as last renewed."""
        # Stopped by a flag and an event, not by cancel(): a cancel that lands inside a NATS
        # request can be swallowed there, and then the keeper would run (and the job wait)
        # forever.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            _, still_running = await asyncio.wait({self._task}, timeout=KEEPER_STOP_SECONDS)
            if still_running:
                self._task.cancel()
        return self.lease

    async def _keep(self) -> None:
        while not self._stopping and not self.lost.is_set():
            due = self.lease.sent_at + self.interval
            if not self._renew_now and time.monotonic() < due:
                await self._pause(due - time.monotonic())
                continue
            on_time = time.monotonic() >= due
            self._renew_now = False
            if await self._renew_once():
                self._renewed.set()
                self._renewed = asyncio.Event()
                # A renewal asked for early (confirm(), the tool's process group written at its
                # start) skips the check: the job's claim has just made it, and the renewal on
                # time makes it within an interval. After failed attempts it is made at once.
                if on_time or self._missed:
                    self._missed = False
                    await self._check_after_renewal()
            else:
                self._missed = True

    async def _renew_once(self) -> bool:
        """Renew, sending the request again every ``request_timeout`` until one is confirmed or
        the deadline passes. True when confirmed.

        An attempt not answered in time is not given up but kept waiting beside the next: a
        paused server answers the requests in its socket in the order sent once it runs again,
        so the first attempt's answer comes back first, ahead of the claims and publishes the
        runner sends after the pause (and of the later attempts, which it refuses: the first
        one changed the revision). Dropping it, as the keeper used to, left the runner waiting
        for the last attempt's refusal, then a read and a write of its own, each behind that
        flood, while the deadline ran out (jobs LEASE_LOST after a pause shorter than the TTL).
        The attempts that ended are judged together (``_outcome``): one stored confirms the
        lease whatever the others say.
        """
        attempts: set[asyncio.Task[Lease | None]] = set()
        send_at = time.monotonic()
        failed = False  # the last attempt ended in an error: the next one is no resend
        try:
            while not self._stopping:
                now = time.monotonic()
                remaining = self.deadline - now
                if remaining <= 0:
                    self._lose("deadline")
                    return False
                if now >= send_at:
                    if attempts and not failed:
                        log.warning("lease renewal not answered yet, sending it again")
                    failed = False
                    attempt = asyncio.create_task(
                        self.slots.renew(self.lease, self._value, remaining)
                    )
                    # One left behind may still end with an error (NATS closed): read, not logged.
                    attempt.add_done_callback(_unheeded)
                    attempts.add(attempt)
                    if self._along is not None:
                        # Sent before the attempt's task first runs, so before its rewrite,
                        # and both reach the socket in the flusher's one write.
                        along, self._along = self._along, None
                        await _send_along(along)
                    send_at = now + self.request_timeout
                wait = min(send_at - now, remaining)
                if not attempts:  # all failed at once: the next is sent after a short pause
                    await self._pause(wait)
                    continue
                # Waiting on the attempts, a pause included: one answered meanwhile is seen at
                # once, not after the attempts sent since have been refused too.
                done, _ = await asyncio.wait(
                    attempts, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                attempts -= done
                outcome = self._outcome(done)
                if outcome == "refused":
                    self._lose("refused")
                    return False
                if isinstance(outcome, Lease):
                    self.lease = outcome
                    deadline = guardian_deadline(outcome.sent_at, self.ttl)
                    for until in self._holders:
                        until(deadline)
                    return True
                if outcome == "failed":  # NATS unreachable: sent again until the deadline
                    failed = True
                    send_at = min(send_at, time.monotonic() + RETRY_PAUSE_SECONDS)
                self._missed = True
            return False
        finally:
            for attempt in attempts:  # answered later, or never: nobody waits for them
                attempt.cancel()

    @staticmethod
    def _outcome(
        done: set[asyncio.Task[Lease | None]],
    ) -> Lease | Literal["refused", "failed", "none"]:
        """What the attempts just ended say, taken together (a set has no order): the stored
        renewal of the highest revision, the latest written, if any; else "refused" if one found
        the key gone or another's; else "failed" if one met an error; else "none"."""
        stored: list[Lease] = []
        refused = failed = False
        for attempt in done:
            exc = attempt.exception()
            if exc is not None:
                log.warning("lease renewal failed, retrying", error=repr(exc))
                failed = True
            elif (renewed := attempt.result()) is None:
                refused = True
            else:
                stored.append(renewed)
        if stored:
            return max(stored, key=lambda lease: lease.revision)
        if refused:
            return "refused"
        return "failed" if failed else "none"

    async def _check_after_renewal(self) -> None:
        try:
            # Wall time on purpose: a miss is only logged; the lease itself runs on its TTL,
            # wall time shared with the other processes.
            async with asyncio.timeout(self.request_timeout):
                await self._after_renewal()
        except Exception as exc:
            log.warning("check after lease renewal failed", error=repr(exc))

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, but not past the deadline; woken early by stop() and rewrite()."""
        seconds = min(seconds, self.deadline - time.monotonic())
        if seconds <= 0:
            if time.monotonic() >= self.deadline:
                self._lose("deadline")
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    def _lose(self, reason: LossReason) -> None:
        if self.lost.is_set():
            return
        self.reason = reason
        if reason == "refused":
            log.error("lease lost (renewal refused): stopping the tool")
        else:
            log.error(
                "lease not confirmed in time (NATS unreachable?): stopping the tool",
                seconds_since_confirmed=round(time.monotonic() - self.lease.sent_at, 3),
            )
        self.lost.set()


async def _send_along(along: Callable[[], Awaitable[None]]) -> None:
    try:
        await along()
    except Exception as exc:  # NATS closed: the request's ack is then sent again at the job's end
        log.warning("message sent with the lease's rewrite failed", error=repr(exc))


def _unheeded(attempt: asyncio.Task[Lease | None]) -> None:
    if not attempt.cancelled():
        attempt.exception()
