"""A feed's backpressure (``fanout.PAUSE_BYTES``): a viewer slower than a flood, but reading,
is paced by the feed, never cut for its backlog, at every client limit the settings allow."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import Fanout, Limits
from jobrunner.services.runner.publisher import MAX_BATCH_BYTES

pytestmark = pytest.mark.timeout(120)
SSE_ID = re.compile(rb"^id: (\d+)", re.MULTILINE)
SMALLEST_CLIENT_BYTES = 1 << 20  # ``sse_client_buffer_bytes``'s minimum in the settings


def lines_event(job_id: str, count: int, size: int) -> events.LineLogged:
    now = datetime.now(UTC)
    return events.LineLogged(
        job_id=job_id,
        lines=[events.LogLine(n, "stdout", "INFO", now, "x" * size) for n in range(count)],
    )


async def test_a_slow_reader_at_the_smallest_client_limit_is_paced_not_cut(
    js: JetStreamContext, settings: Settings
) -> None:
    """Before (main too): the feed paused at half the limit (512 KiB) and then handed over a
    piece of up to ``HAND_OVER_BYTES`` plus one event, and one LineLogged may be a runner's
    largest batch (``MAX_BATCH_BYTES``, 512 KiB encoded, about 565 KiB of frames): a viewer
    under the pause, reading slowly, was handed more than its limit and cut. Now a piece goes
    only once some client has room for it whole."""
    names = Names(settings.prefix)
    limits = Limits(
        keepalive=5, client_bytes=SMALLEST_CLIENT_BYTES, total_bytes=64 << 20, history_idle=30
    )
    fanout = Fanout(js, names, sse.frames_for, limits)
    first = await eventstore.publish_many(js, names, [lines_event("flood", 1, 10)])
    got: list[bytes] = []

    async def slow_viewer() -> None:
        async for chunk in sse.job_stream(1000, fanout, "flood", first + 1, None, None):
            got.append(chunk)
            await asyncio.sleep(0.05)  # a slow link: it reads, a chunk per 50 ms

    viewer = asyncio.create_task(slow_viewer())
    async with asyncio.timeout(30):
        while True:
            if fanout.clients == 1:
                break
            await asyncio.sleep(0.01)
    # 250 KiB, 250 KiB (each under a hand-over piece), then one largest-size event: ~6.5 MiB.
    assert len(codec.encode(lines_event("flood", 1000, 460))) <= MAX_BATCH_BYTES  # a runner's
    batch = []
    for _ in range(6):
        batch += [lines_event("flood", 427, 480), lines_event("flood", 427, 480)]
        batch.append(lines_event("flood", 1000, 460))
    last = await eventstore.publish_many(js, names, batch)
    assert last == first + len(batch)  # each stored (the store drops a repeated event)
    try:
        async with asyncio.timeout(60):
            while not viewer.done():
                ids = [int(i) for i in SSE_ID.findall(b"".join(got))]
                if ids and ids[-1] == last:
                    break
                await asyncio.sleep(0.05)
    finally:
        viewer.cancel()
        await asyncio.gather(viewer, return_exceptions=True)
    ids = [int(i) for i in SSE_ID.findall(b"".join(got))]
    assert fanout.clients_cut == 0
    assert sorted(set(ids)) == list(range(first + 1, last + 1))  # every event, none cut off
