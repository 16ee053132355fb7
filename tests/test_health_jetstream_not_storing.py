"""`GET /health` and a JetStream that stopped storing (a real full disk: a small tmpfs as
nats-server's store): nats-server keeps answering every read after its first failed write and
drops every publish unanswered until its next start. With `nats_monitor_url` health says so
(JETSTREAM_NOT_STORING, with what to do), also after space is freed, and is rid of it once
nats-server restarted. Before session 41 it said `ok` throughout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import bind_free_port
from tests.system import System
from tests.tools.health_reports import codes, health
from tests.tools.small_disk import fill, mounted_tmpfs

pytestmark = pytest.mark.timeout(120)


DISK_BYTES = 24 * 1024 * 1024


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 24 MiB tmpfs for nats-server's store."""
    with scratch_dir("jobrunner-test-nats-not-storing-") as root, mounted_tmpfs(root, DISK_BYTES):
        yield root


@pytest.fixture
async def full_disk_nats(small_disk: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(small_disk / "nats")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def system(settings: Settings, full_disk_nats: EmbeddedNats) -> AsyncIterator[System]:
    watched = msgspec.structs.replace(
        settings, nats_url=full_disk_nats.url, nats_monitor_url=full_disk_nats.monitor_url
    )
    async with System(watched) as running:
        yield running


async def until_write_failed(server: EmbeddedNats, names: Names) -> None:
    """Publish big events until nats-server says a write failed (what a tool printing a huge
    line does to a nearly full disk)."""
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        for _ in range(20):
            if server.write_failed.is_set():
                return
            with contextlib.suppress(nats.errors.TimeoutError):  # dropped: the write failed
                await js.publish(f"{names.prefix}.job.filler.log", b"x" * 256 * 1024, timeout=1)
        assert server.write_failed.is_set(), "nats-server said no critical write error"
    finally:
        await nc.close()


async def test_health_tells_a_jetstream_that_stopped_storing_until_nats_restarts(
    system: System,
    full_disk_nats: EmbeddedNats,
    small_disk: Path,
) -> None:
    """A full disk: JETSTREAM_NOT_STORING (degraded) with what to do, still after space is
    freed (nats-server mends only at a start), gone once nats-server started again."""
    await system.start_api()
    assert "JETSTREAM_NOT_STORING" not in codes(await health(system))
    filler = fill(small_disk, leave=512 * 1024)
    await until_write_failed(full_disk_nats, Names(system.settings.prefix))
    full = await health(system)
    assert "JETSTREAM_NOT_STORING" in codes(full), full
    assert full["http_status"] == 200, full
    (problem,) = [p for p in full["problems"] if p["code"] == "JETSTREAM_NOT_STORING"]
    assert "no space left on device" in problem["message"], problem
    assert "Free space in nats-server's store directory" in problem["message"], problem
    filler.unlink()
    assert "JETSTREAM_NOT_STORING" in codes(await health(system))  # space alone mends nothing
    await asyncio.to_thread(full_disk_nats.stop)
    await asyncio.to_thread(full_disk_nats.start)
    async with asyncio.timeout(30):
        while True:  # the API reconnects to the restarted server
            body = await health(system)
            if body["nats"] and "JETSTREAM_NOT_STORING" not in codes(body):
                break
            await asyncio.sleep(0.2)


@pytest.fixture
def silent_monitor() -> Iterator[str]:
    """An address that takes connections and never answers (a frozen monitoring port)."""
    listener = bind_free_port()
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


async def test_a_monitoring_address_that_never_answers_leaves_the_problem_unknown(
    settings: Settings, silent_monitor: str
) -> None:
    """A monitoring port that accepts and never answers: health still answers (its NATS bound
    covers the ask), with neither JETSTREAM_NOT_STORING nor NATS_SLOW (NATS itself answered)."""
    watched = msgspec.structs.replace(
        settings, nats_monitor_url=silent_monitor, health_nats_timeout_seconds=0.5
    )
    async with System(watched) as system:
        await system.start_api()
        body = await health(system)
    assert not {"JETSTREAM_NOT_STORING", "NATS_SLOW", "NATS_TIMEOUT"} & set(codes(body)), body
    assert body["stream_last_seq"] is not None, body
