"""`jobrunner up`'s keeper and a full disk under its NATS server (a real small tmpfs): nats-server
stops storing at its first failed write (every publish then goes unanswered, every read still
answers); the keeper leaves it while the disk is full, says so once, and restarts it once there
is room again, after which it stores again. Before session 41 nothing recovered until someone
restarted nats-server by hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from structlog.testing import capture_logs

from jobrunner.embedded import keeper, writefailure
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir
from tests.tools.captured_logs import lines_of, until_logged
from tests.tools.small_disk import fill, mounted_tmpfs

pytestmark = pytest.mark.timeout(120)

DISK_BYTES = 24 * 1024 * 1024
ROOM = 4 * 1024 * 1024  # writefailure.ROOM_BYTES here: the disk is small
STOPPED = (
    "nats-server stopped writing its data: its disk is full; it is restarted once there is room"
)
RESTARTING = "nats-server stopped writing its data; there is room again: restarting it"
# How long the test watches the keeper leave a server on a full disk running (ten of its checks
# at CHECK_SECONDS 0.1): a restart then would show as a new pid.
FULL_DISK_WATCHED_SECONDS = 1.0


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 24 MiB tmpfs for nats-server's store."""
    with scratch_dir("jobrunner-test-nats-full-disk-") as root, mounted_tmpfs(root, DISK_BYTES):
        yield root


@pytest.fixture
async def kept_nats(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[EmbeddedNats]:
    monkeypatch.setattr(writefailure, "ROOM_BYTES", ROOM)
    monkeypatch.setattr(keeper, "CHECK_SECONDS", 0.1)
    server = EmbeddedNats(small_disk / "nats")
    await asyncio.to_thread(server.start)
    stop = asyncio.Event()
    keeping = asyncio.create_task(keeper.keep_running([server], stop))
    try:
        yield server
    finally:
        stop.set()
        await keeping
        await asyncio.to_thread(server.stop)


async def stored(js: nats.js.JetStreamContext, data: bytes) -> bool:
    """Whether one publish is stored (acknowledged) within 2 s."""
    try:
        await js.publish("events.x", data, timeout=2)
    except nats.errors.TimeoutError:
        return False
    return True


async def test_nats_stops_storing_on_a_full_disk_and_is_restarted_once_there_is_room(
    kept_nats: EmbeddedNats, small_disk: Path
) -> None:
    """A full disk: publishes go unanswered and the keeper says so once without restarting;
    space freed: the keeper restarts nats-server on its port, and publishes are stored again."""
    nc = await nats.connect(kept_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        js = nc.jetstream()
        await js.add_stream(name="EVENTS", subjects=["events.>"])
        first_pid = kept_nats.proc.pid if kept_nats.proc else None
        with capture_logs() as logs:
            filler = fill(small_disk, leave=512 * 1024)
            for _ in range(10):  # a few 256 KiB messages fill what is left
                if not await stored(js, b"x" * 256 * 1024):
                    break
            # Its log line may follow the publish that timed out: waited for, not assumed.
            said = await asyncio.to_thread(kept_nats.write_failed.wait, 10)
            assert said, "nats-server said no critical write error"
            await until_logged(logs, STOPPED, timeout=10)
            # nats-server's own line, told as a full disk by its text (writefailure.out_of_space)
            assert "no space left on device" in lines_of(logs, STOPPED)[0]["error"]
            await asyncio.sleep(FULL_DISK_WATCHED_SECONDS)
            assert kept_nats.proc is not None
            assert kept_nats.proc.pid == first_pid
            filler.unlink()  # the operator frees space: nats-server still stores nothing
            await until_logged(logs, "nats-server is running again", timeout=30)
        assert lines_of(logs, RESTARTING)[0]["free_bytes"] >= ROOM
        assert kept_nats.proc is not None
        assert kept_nats.proc.pid != first_pid
        async with asyncio.timeout(30):
            while not await stored(js, b"after"):
                pass  # the client reconnects to the restarted server
        info = await js.stream_info("EVENTS")
        assert info.state.last_seq >= 1
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
