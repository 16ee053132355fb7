"""The job_update stream's reader: a backlog, then live events, every non-line event once."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.api.job_updates import update_messages

pytestmark = pytest.mark.timeout(120)
KINDS = ["requested", "status", "lines", "progress", "lines", "cancel", "lines"]


async def publish(js: JetStreamContext, names: Names, rounds: int) -> list[tuple[int, str]]:
    subjects = [names.job_kind_subject(f"j{i}", k) for i in range(rounds) for k in KINDS]
    acks = await asyncio.gather(*[await js.publish_async(s, b"{}") for s in subjects])
    return [(ack.seq, s) for ack, s in zip(acks, subjects, strict=True)]


@pytest.mark.parametrize(
    ("rounds", "raw"),
    [(300, True), (300, False), (20, True)],
    ids=["raw-reader", "nats-py", "short-backlog"],
)
async def test_a_backlog_then_live_events_arrive_once_in_order_without_lines(
    settings: Settings, js: JetStreamContext, rounds: int, raw: bool
) -> None:
    """Started behind a backlog, the reader gets every update once, then the live ones too
    (a long backlog through the raw stream reader, a short one or one without a connection's
    settings through nats-py)."""
    names = Names(settings.prefix)
    backlog = await publish(js, names, rounds)
    connection = NatsConnection.from_settings(settings) if raw else None
    seen: list[int] = []
    reader = update_messages(
        js, names, 1, 0.2, 1024 * 1024, connection, patience=settings.sse_history_idle_seconds
    )
    async with asyncio.timeout(60):
        while len(seen) < len(backlog) * 4 // 7:
            seen += [seq for seq, _ in await anext(reader)]
        # Caught up: the next read hands over to the live consumer; the events after it come too.
        await anext(reader)
        live = await publish(js, names, 50)
        while len(seen) < (len(backlog) + len(live)) * 4 // 7:
            seen += [seq for seq, _ in await anext(reader)]
    await reader.aclose()
    assert seen == [seq for seq, s in backlog + live if not s.endswith(".lines")]


async def test_a_start_past_the_end_waits_for_the_next_event(
    settings: Settings, js: JetStreamContext
) -> None:
    """Resuming after the last stored event opens no catch-up: the next event comes live."""
    names = Names(settings.prefix)
    backlog = await publish(js, names, 300)
    reader = update_messages(
        js,
        names,
        backlog[-1][0] + 1,
        0.2,
        1024 * 1024,
        NatsConnection.from_settings(settings),
        patience=settings.sse_history_idle_seconds,
    )
    async with asyncio.timeout(30):
        assert await anext(reader) == []  # a keep-alive: nothing old is sent
        live = await publish(js, names, 1)
        seen: list[int] = []
        while len(seen) < 4:
            seen += [seq for seq, _ in await anext(reader)]
    await reader.aclose()
    assert seen == [seq for seq, s in live if not s.endswith(".lines")]


async def test_a_raw_catch_up_that_cannot_reach_nats_goes_on_through_nats_py(
    settings: Settings, js: JetStreamContext
) -> None:
    """The raw reader's connection refused: the backlog still comes, once, in order."""
    names = Names(settings.prefix)
    backlog = await publish(js, names, 300)
    unreachable = dataclasses.replace(
        NatsConnection.from_settings(settings),
        servers=[f"nats://127.0.0.1:{free_port()}"],
        connect_timeout=0.5,
    )
    seen: list[int] = []
    reader = update_messages(
        js, names, 1, 0.2, 1024 * 1024, unreachable, patience=settings.sse_history_idle_seconds
    )
    async with asyncio.timeout(60):
        while len(seen) < len(backlog) * 4 // 7:
            seen += [seq for seq, _ in await anext(reader)]
    await reader.aclose()
    assert seen == [seq for seq, s in backlog if not s.endswith(".lines")]


async def test_nats_restarted_during_a_raw_catch_up_loses_and_repeats_nothing(
    settings: Settings,
) -> None:
    """NATS restarts part-way through a long backlog: the stream goes on from the last update
    it handed out (through nats-py), every update once, in order."""
    with scratch_dir("jobrunner-test-updates-restart-") as root:
        port = free_port()
        server = EmbeddedNats(root / "nats", port=port)
        server.start()
        private = Settings(nats_url=server.url, prefix=settings.prefix)
        names = Names(private.prefix)
        nc = await eventstore.connect(private, "test")
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, private)
        subjects = [names.job_kind_subject(f"j{i}", k) for i in range(600) for k in KINDS]
        body = b"{}" + b" " * 4000  # ~17 MB in all: far more than one socket read
        acks = await asyncio.gather(*[await js.publish_async(s, body) for s in subjects])
        backlog = [(ack.seq, s) for ack, s in zip(acks, subjects, strict=True)]
        wanted = [seq for seq, s in backlog if not s.endswith(".lines")]
        seen: list[int] = []
        reader = update_messages(
            js,
            names,
            1,
            0.2,
            1024 * 1024,
            NatsConnection.from_settings(private),
            patience=private.sse_history_idle_seconds,
        )
        try:
            async with asyncio.timeout(90):
                seen += [seq for seq, _ in await anext(reader)]
                assert seen[-1] < wanted[-1], "the whole backlog came in one read"
                await asyncio.to_thread(server.stop)
                server = EmbeddedNats(root / "nats", port=port)
                await asyncio.to_thread(server.start)
                while not seen or seen[-1] < wanted[-1]:
                    seen += [seq for seq, _ in await anext(reader)]
        finally:
            await reader.aclose()
            await eventstore.close(nc)
            server.stop()
    assert seen == wanted
