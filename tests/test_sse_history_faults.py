"""A client's catch-up read from JetStream survives a short NATS stall and never skips a long one.

These tests pause their own nats-server (SIGSTOP), never the session-shared one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import nats.errors
import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.subscription import ordered_reader, position
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import Fanout, HistoryStalled, Limits
from tests.freeze import freeze, thaw, thaw_later

pytestmark = pytest.mark.timeout(120)

HISTORY_IDLE = 2.0
MESSAGES = 3000
JOB = "stalljob"


@pytest.fixture(scope="module")
def own_nats() -> Iterator[EmbeddedNats]:
    with scratch_dir("jobrunner-test-stall-") as root:
        server = EmbeddedNats(root / "store")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def js(own_nats: EmbeddedNats, settings: Settings) -> AsyncIterator[JetStreamContext]:
    own = Settings(nats_url=own_nats.url, prefix=settings.prefix)
    nc = await eventstore.connect(own, "test")
    js = nc.jetstream()
    names = Names(own.prefix)
    await eventstore.ensure_topology(js, names, own)
    now = datetime.now(UTC)
    batch = [
        events.LineLogged(
            job_id=JOB,
            lines=[events.LogLine(n, "stdout", "INFO", now, f"line {n} " + "x" * 2000)],
        )
        for n in range(MESSAGES)
    ]
    await eventstore.publish_many(js, names, batch)
    yield js
    await js.delete_stream(names.stream)
    await eventstore.close(nc)


async def read_history(
    js: JetStreamContext, prefix: str, pid: int, pause: float
) -> tuple[list[int], bool]:
    """The sequences a catch-up read yields with NATS paused for ``pause`` s after the first
    one, and whether it gave up."""
    limits = Limits(keepalive=1, client_bytes=4096, total_bytes=1 << 20, history_idle=HISTORY_IDLE)
    fanout = Fanout(js, Names(prefix), sse.frames_for, limits)
    seqs: list[int] = []
    resuming: asyncio.TimerHandle | None = None
    try:
        async for item in fanout.history(JOB, 1, MESSAGES):
            seqs.append(item.seq)
            if len(seqs) == 1:
                # Paused while the read goes on: it meets the stall once its buffer is empty.
                freeze(pid)
                resuming = thaw_later(pause, pid)
    except HistoryStalled:
        return seqs, True
    finally:
        if resuming is not None:  # (left behind, it would cut the next test's pause short)
            resuming.cancel()
        thaw(pid)
    return seqs, False


async def test_a_stall_shorter_than_the_idle_limit_loses_nothing(
    js: JetStreamContext, own_nats: EmbeddedNats, settings: Settings
) -> None:
    """NATS paused for half the idle limit: the catch-up read goes on and yields every event."""
    assert own_nats.proc is not None
    seqs, stalled = await read_history(js, settings.prefix, own_nats.proc.pid, HISTORY_IDLE / 2)
    assert not stalled
    assert seqs == list(range(1, MESSAGES + 1))


async def test_a_stall_longer_than_the_idle_limit_ends_the_read_without_a_gap(
    js: JetStreamContext, own_nats: EmbeddedNats, settings: Settings
) -> None:
    """NATS paused for twice the idle limit: the read gives up (the client resumes) with
    everything it yielded contiguous, never skipping to later events."""
    assert own_nats.proc is not None
    seqs, stalled = await read_history(js, settings.prefix, own_nats.proc.pid, HISTORY_IDLE * 2)
    assert stalled
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) < MESSAGES


async def _opened_into_a_pause(
    js: JetStreamContext, prefix: str, pid: int, pause: float
) -> list[int]:
    """The first 100 sequences a reader yields when its SUB and its consumer's create are sent
    into a NATS pause of ``pause`` s (raises what the create raises)."""
    names = Names(prefix)
    freeze(pid)
    # Cancelled on the way out: a resume left behind would cut the next test's pause short.
    resuming = thaw_later(pause, pid)
    try:
        seqs: list[int] = []
        async with ordered_reader(js, names.stream, names.job_subjects(JOB), start_seq=1) as reader:
            while len(seqs) < 100:
                msgs = await reader.next_batch(HISTORY_IDLE * 5)
                assert msgs, "the reader got nothing"
                seqs.extend(position(msg)[0] for msg in msgs)
        return seqs[:100]
    finally:
        resuming.cancel()
        thaw(pid)


async def test_a_reader_opened_into_a_pause_shorter_than_its_create_timeout_reads_from_its_start(
    js: JetStreamContext, own_nats: EmbeddedNats, settings: Settings
) -> None:
    """Its SUB and its consumer's create wait in the paused server's socket, in that order: once
    NATS runs again the consumer delivers from the reader's start, nothing skipped."""
    assert own_nats.proc is not None
    timeout = js._timeout
    seqs = await _opened_into_a_pause(js, settings.prefix, own_nats.proc.pid, timeout * 0.6)
    assert seqs == list(range(1, 101))


async def test_a_reader_opened_into_a_pause_longer_than_its_create_timeout_fails_and_leaves_none(
    js: JetStreamContext, own_nats: EmbeddedNats, settings: Settings
) -> None:
    """The create times out: the reader raises (a feed ends, its clients resume) and drops its
    subscription; a reader opened once NATS runs again reads from its start."""
    assert own_nats.proc is not None
    timeout = js._timeout
    subscriptions = len(js._nc._subs)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await _opened_into_a_pause(js, settings.prefix, own_nats.proc.pid, timeout * 1.4)
    assert len(js._nc._subs) == subscriptions
    seqs = await _opened_into_a_pause(js, settings.prefix, own_nats.proc.pid, 0)
    assert seqs == list(range(1, 101))
