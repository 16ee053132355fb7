"""When `up`'s keeper starts again a server that stopped writing its data, and what it says.

nats-server's store, once a write failed, drops every publish until its next start while it
answers every read, so a restart is what mends it; but not every restart helps:

- A full disk ("no space left on device", which nats-server itself tells apart by that text:
  its store.go ``isOutOfSpaceErr``) mends once there is room: the server is left running while
  its directory has less than ``ROOM_BYTES`` free (a start would fail the same way), said once,
  and restarted once there is room, at most once per ``RESTART_SPACING_SECONDS``.
- Any other write error (a failing disk's EIO, a filesystem remounted read-only, a quota) has no
  sign of being mended: it is said once with what to do, and the server is restarted after a
  wait doubling from ``RESTART_SPACING_SECONDS`` up to ``LONGEST_RESTART_SPACING_SECONDS``, so a
  passing fault is mended and a lasting one is not met with a restart every 30 s."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog

from jobrunner.common import retry

log = structlog.get_logger()

# Free space a server's directory needs before a server that stopped writing for a full disk is
# started again: room for the events of a while, not one write (a start on a nearly full disk
# fails again).
ROOM_BYTES = 64 * 1024 * 1024
# Between two restarts of a server for a failed write, at least: a disk that fills again at
# once (a tool still printing) is not met with a restart every check. For other write errors
# the first wait, doubling up to the longest.
RESTART_SPACING_SECONDS = 30.0
LONGEST_RESTART_SPACING_SECONDS = 600.0

# What an operator does about a write error other than a full disk, by the text of the system's
# error (Go's, as nats-server prints it); the first one found in the error applies.
_ADVICE = (
    (
        "read-only file system",
        "its filesystem was made read-only (after disk errors? see dmesg): "
        "repair it and mount it read-write",
    ),
    ("disk quota exceeded", "raise the disk quota of the server's user there, or free space"),
    ("input/output error", "the disk failed a write: check it (dmesg, smartctl)"),
    ("permission denied", "give the server's user write access to it"),
)


def out_of_space(write_error: str) -> bool:
    """Whether a server's write error is a full disk (mended by room, then a restart)."""
    return "no space left" in write_error.lower()


def what_to_do(write_error: str, directory: Path) -> str:
    """What an operator does about ``write_error`` of the server whose data is in
    ``directory``."""
    if out_of_space(write_error):
        return f"free space in {directory}"
    lowered = write_error.lower()
    found = next((advice for text, advice in _ADVICE if text in lowered), None)
    return f"{directory}: {found or 'see the error: the server must be able to write there'}"


class WriteFailures:
    """One server's failed writes: ``restart_now`` says whether to start it again now, and says
    what it does (each failure once)."""

    def __init__(self, name: str, directory: Path, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.directory = directory
        self._clock = clock
        self._told = False
        # Restarts in a row for write errors other than a full disk (the wait doubles with each);
        # counted again from none once the server ran longer than the longest wait without one.
        self._restarts = 0
        self._last_restart: float | None = None
        self._seen_at: float | None = None  # when the failure under way was first seen

    def restart_now(self, write_error: str, free_bytes: int) -> bool:
        """Whether the server, whose store failed with ``write_error`` while its directory has
        ``free_bytes`` free, is to be started again now (said when it is, and once before)."""
        now = self._clock()
        if self._seen_at is None:
            self._seen_at = now
            ran_well = self._last_restart is None or (
                now - self._last_restart > LONGEST_RESTART_SPACING_SECONDS
            )
            if ran_well:
                self._restarts = 0
        if out_of_space(write_error):
            return self._when_room(write_error, free_bytes, now)
        return self._after_waiting(write_error, now)

    def _restarted(self, now: float) -> bool:
        self._told = False
        self._seen_at = None
        self._last_restart = now
        return True

    def _when_room(self, write_error: str, free_bytes: int, now: float) -> bool:
        since = now - self._last_restart if self._last_restart is not None else None
        if free_bytes >= ROOM_BYTES and (since is None or since >= RESTART_SPACING_SECONDS):
            log.warning(
                f"{self.name} stopped writing its data; there is room again: restarting it",
                server=self.name,
                directory=str(self.directory),
                free_bytes=free_bytes,
            )
            return self._restarted(now)
        if not self._told:
            self._told = True
            log.error(
                f"{self.name} stopped writing its data: its disk is full; "
                "it is restarted once there is room",
                server=self.name,
                error=write_error,
                directory=str(self.directory),
                free_bytes=free_bytes,
                room_bytes=ROOM_BYTES,
                what_to_do=what_to_do(write_error, self.directory),
            )
        return False

    def wait(self) -> float:
        """The wait before the next restart for a write error other than a full disk."""
        return retry.delay_after(
            self._restarts + 1,
            first=RESTART_SPACING_SECONDS,
            longest=LONGEST_RESTART_SPACING_SECONDS,
        )

    def _after_waiting(self, write_error: str, now: float) -> bool:
        assert self._seen_at is not None
        wait = self.wait()
        if now - self._seen_at >= wait:
            self._restarts += 1
            log.warning(
                f"{self.name} stopped writing its data; restarting it",
                server=self.name,
                error=write_error,
                waited_seconds=wait,
                next_wait_seconds=self.wait(),
            )
            return self._restarted(now)
        if not self._told:
            self._told = True
            log.error(
                f"{self.name} stopped writing its data (not for a full disk): restarting it "
                f"in {wait:g} s",
                server=self.name,
                error=write_error,
                directory=str(self.directory),
                restart_in_seconds=wait,
                what_to_do=what_to_do(write_error, self.directory),
            )
        return False
