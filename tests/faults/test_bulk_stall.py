"""The runner's bulk connection (a flood's large line messages) frozen alone, its main connection
fine: for a freeze shorter than the bulk ack timeout (a third of the lease TTL), longer than it,
and one held until the job has ended.

The lease, the heartbeat and /health use only the main connection: had the bulk connection been
a flood's only path, a cancelled job's end would wait for its last message there, so the job
stayed running and kept its lock as long as the freeze lasted (session 12's review). It is a fast
path only: a message it does not store in time goes, with the same event id, on the main
connection. Whatever the freeze, every line the tool printed is stored once and in order (a late
bulk copy is dropped as a duplicate), and a cancel during the freeze ends the job and frees its
lock within the lease TTL and a margin.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import slot_key
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import TERMINAL_STATUSES, JobStatus
from jobrunner.contracts.names import Names
from jobrunner.services.runner import bulk
from jobrunner.services.runner.service import run_runner
from tests.stalling_proxy import FreezingProxy

MAIN, BULK = 0, 1  # the runner's connections through the proxy, in the order it opens them
# What a cancel may take besides the lease TTL: the tool's cancel grace (1 s), the bulk ack
# timeout (1 s with a 3 s TTL) and a loaded machine's slowness.
MARGIN = 6.0
LINES_BEFORE_FREEZE = 50_000  # the flood is well under way: its messages are large

FLOOD = """
import sys
i = 0
while True:
    sys.stdout.write("".join(f"{n:010d} {'x' * 89}\\n" for n in range(i, i + 1000)))
    i += 1000
"""


def flood_line(n: int) -> str:
    """The text of the flood's line ``n``."""
    return f"{n:010d} {'x' * 89}"


def job_types(tmp_path: Path) -> Path:
    tool = tmp_path / "flood.py"
    tool.write_text(FLOOD)
    path = tmp_path / "types.toml"
    path.write_text(
        f"""
[job_types.flood]
argv = ["{sys.executable}", "{tool}"]
cancel_grace_seconds = 1
timeout_seconds = 3600
"""
    )
    return path


async def stored_lines(settings: Settings, job_id: str) -> list[events.LogLine]:
    """The job's lines as stored in JetStream, message after message."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test-read")
    sub = await nc.jetstream().subscribe(
        names.job_kind_subject(job_id, "lines"), stream=names.stream, ordered_consumer=True
    )
    lines: list[events.LogLine] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            event = codec.decode(msg.data)
            assert isinstance(event, events.LineLogged)
            lines += event.lines
            if msg.metadata.num_pending == 0:
                return lines
    finally:
        await sub.unsubscribe()
        await eventstore.close(nc)


@pytest.mark.parametrize(
    "factor",
    [
        pytest.param(0.6, id="shorter-than-the-bulk-ack-timeout"),
        pytest.param(1.5, id="longer-than-the-bulk-ack-timeout"),
        pytest.param(math.inf, id="held-until-the-job-ended"),
    ],
)
async def test_a_bulk_connection_freeze_keeps_lines_and_a_cancel_ends_the_job(
    settings: Settings, tmp_path: Path, factor: float
) -> None:
    names = Names(settings.prefix)
    lock = f"sheet-{uuid.uuid4().hex[:8]}"
    job_id = f"job{uuid.uuid4().hex[:10]}"
    freeze = factor * bulk.ack_timeout(settings)
    target = urlsplit(settings.nats_url)
    assert target.hostname is not None
    assert target.port is not None
    nc = await eventstore.connect(settings, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    counted = 0
    flooding = asyncio.Event()
    ended: list[tuple[float, JobStatus]] = []

    async def watch(msg: Msg) -> None:
        nonlocal counted
        event = codec.decode(msg.data)
        if isinstance(event, events.LineLogged):
            counted += len(event.lines)
            if counted >= LINES_BEFORE_FREEZE:
                flooding.set()
        elif isinstance(event, events.StatusChanged) and event.status in TERMINAL_STATUSES:
            ended.append((time.monotonic(), event.status))

    await nc.subscribe(names.job_subjects(job_id), cb=watch)
    async with FreezingProxy(target.hostname, target.port) as proxy:
        stop = asyncio.Event()
        runner = asyncio.create_task(
            run_runner(
                msgspec.structs.replace(
                    settings, nats_url=proxy.url(), job_types_file=str(job_types(tmp_path))
                ),
                stop,
            )
        )
        try:
            async with asyncio.timeout(60):
                await proxy.connected(BULK + 1)
                await eventstore.publish(
                    js, names, events.JobRequested(job_id=job_id, job_type="flood", lock=lock)
                )
                await flooding.wait()
            proxy.freeze(BULK)
            frozen_at = time.monotonic()
            await eventstore.publish(
                js, names, events.CancelRequested(job_id=job_id, requested_by="test")
            )
            cancelled_at = time.monotonic()
            locks = await js.key_value(names.locks_bucket)
            freed_at: float | None = None
            deadline = cancelled_at + settings.lease_ttl_seconds + MARGIN
            while (freed_at is None or not ended) and time.monotonic() < deadline:
                if time.monotonic() - frozen_at >= freeze:
                    proxy.thaw(BULK)
                if freed_at is None:
                    try:
                        await locks.get(slot_key(lock, job_id))
                    except nats.js.errors.KeyNotFoundError:  # deleted too
                        freed_at = time.monotonic()
                await asyncio.sleep(0.05)
            proxy.thaw(BULK)
            assert ended, "the cancelled job did not end within the lease TTL and a margin"
            assert ended[0][1] == JobStatus.CANCELLED
            assert freed_at is not None, "its lock was not freed within the lease TTL and a margin"
        finally:
            proxy.thaw(BULK)
            stop.set()
            await asyncio.wait_for(runner, 60)
        # What the frozen connection held is delivered, and read by the server, before it
        # closes: a late copy of a message sent again on the main connection is in by now.
        await proxy.quiet()
    await eventstore.close(nc)
    assert proxy.held[BULK] > 0, "the freeze caught none of the flood's messages"
    lines = await stored_lines(settings, job_id)
    assert len(lines) >= LINES_BEFORE_FREEZE
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    # The cancel's SIGTERM may cut the tool's last write short: its last line may be a part.
    *whole, last = [line.text for line in lines]
    assert whole == [flood_line(n) for n in range(len(whole))]
    assert last
    assert flood_line(len(whole)).startswith(last)
