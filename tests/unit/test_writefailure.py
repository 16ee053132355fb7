"""When `up`'s keeper restarts a server that stopped writing: a full disk once there is room,
any other write error after waits doubling from 30 s to 10 min, each failure said once with what
to do. The error lines are nats-server's own (server/stream.go, server/filestore.go and
server/jetstream_cluster.go of nats-server 2.x), with the system errors Go prints."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from jobrunner.embedded import writefailure
from jobrunner.embedded.writefailure import ROOM_BYTES, WriteFailures

PREFIX = "[4242] 2026/12/05 17:40:00.123456 [ERR] "
STREAM = "JetStream stream '$G > jobrunner' critical write error: "
FILESTORE = "Filestore [jobrunner] Critical write error: "
CONSUMER = "JetStream consumer '$G > jobrunner > projector' critical write error: "
BLOCK = "write /state/nats/jetstream/$G/streams/jobrunner/msgs/1.blk: "

FULL = [
    PREFIX + STREAM + BLOCK + "no space left on device",
    PREFIX + FILESTORE + BLOCK + "no space left on device",
    PREFIX + CONSUMER + "open /state/nats/o.dat: no space left on device",
]
OTHER = {
    PREFIX + STREAM + BLOCK + "input/output error": "check it (dmesg",
    PREFIX + FILESTORE + BLOCK + "read-only file system": "mount it read-write",
    PREFIX + STREAM + BLOCK + "disk quota exceeded": "raise the disk quota",
    PREFIX + CONSUMER + "open /state/nats/o.dat: permission denied": "write access",
    PREFIX + STREAM + "malformed or corrupt message": "see the error",
}
DIRECTORY = Path("/state/nats")


class Clock:
    """The keeper's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def failures(clock: Clock) -> WriteFailures:
    return WriteFailures("nats-server", DIRECTORY, clock)


@pytest.mark.parametrize("error", FULL)
def test_a_full_disk_waits_for_room_said_once(
    failures: WriteFailures, clock: Clock, error: str
) -> None:
    """No space left: the server is left running while the disk is full (said once, with the
    directory to free), restarted once there is room."""
    with capture_logs() as logs:
        for _ in range(5):
            assert not failures.restart_now(error, free_bytes=ROOM_BYTES - 1)
            clock.now += 60
        assert failures.restart_now(error, free_bytes=ROOM_BYTES)
    told = [line for line in logs if line["log_level"] == "error"]
    assert len(told) == 1, logs
    assert told[0]["what_to_do"] == f"free space in {DIRECTORY}"
    assert "restarting it" in logs[-1]["event"]


def test_a_full_disk_again_at_once_is_restarted_at_most_every_30_s(
    failures: WriteFailures, clock: Clock
) -> None:
    """A disk that fills again right after a restart: the next restart waits 30 s, room or not."""
    assert failures.restart_now(FULL[0], free_bytes=ROOM_BYTES)
    clock.now += writefailure.RESTART_SPACING_SECONDS - 0.1
    assert not failures.restart_now(FULL[0], free_bytes=ROOM_BYTES)
    clock.now += 0.2
    assert failures.restart_now(FULL[0], free_bytes=ROOM_BYTES)


@pytest.mark.parametrize(("error", "advice"), OTHER.items())
def test_another_write_error_is_said_once_with_what_to_do_and_backs_off(
    failures: WriteFailures, clock: Clock, error: str, advice: str
) -> None:
    """EIO, read-only, a quota, permissions: free space is no sign of a mend. Said once with
    what to do; restarted after 30 s, then 60, 120 ... at most 10 min, each just past its wait
    and not just before, whatever the free space."""
    waits = []
    with capture_logs() as logs:
        for _ in range(8):  # the server fails again at once after each restart
            wait = failures.wait()
            waits.append(wait)
            assert not failures.restart_now(error, free_bytes=10 * ROOM_BYTES)  # seen
            clock.now += wait - 0.1
            assert not failures.restart_now(error, free_bytes=10 * ROOM_BYTES)
            clock.now += 0.2
            assert failures.restart_now(error, free_bytes=10 * ROOM_BYTES)
    assert waits == [30, 60, 120, 240, 480, 600, 600, 600]
    told = [line for line in logs if line["log_level"] == "error"]
    assert len(told) == 8, logs  # once per failure (the server failed again after each restart)
    assert advice in told[0]["what_to_do"]
    assert str(DIRECTORY) in told[0]["what_to_do"]
    assert told[0]["error"] == error


def test_another_write_error_long_after_the_last_restart_waits_30_s_again(
    failures: WriteFailures, clock: Clock
) -> None:
    """A server that ran well for longer than the longest wait starts its backoff again."""
    error = next(iter(OTHER))
    for _ in range(3):
        assert not failures.restart_now(error, free_bytes=0)
        clock.now += failures.wait()
        assert failures.restart_now(error, free_bytes=0)
    assert failures.wait() == 240
    clock.now += writefailure.LONGEST_RESTART_SPACING_SECONDS + 1  # it ran well meanwhile
    assert not failures.restart_now(error, free_bytes=0)
    assert failures.wait() == 30
    clock.now += 30
    assert failures.restart_now(error, free_bytes=0)


@pytest.mark.parametrize("error", [*FULL, *OTHER])
def test_only_no_space_left_is_a_full_disk(error: str) -> None:
    """The sign nats-server itself uses (store.go isOutOfSpaceErr): 'no space left'."""
    assert writefailure.out_of_space(error) == (error in FULL)
