"""The job_update stream's reader: a backlog, then live events, every non-line event once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.api.job_updates import update_messages

pytestmark = pytest.mark.timeout(120)
KINDS = ["requested", "status", "lines", "progress", "lines", "cancel", "lines"]


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    nc = await eventstore.connect(settings, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, Names(settings.prefix), settings)
    yield js
    await eventstore.close(nc)


async def publish(js: JetStreamContext, names: Names, rounds: int) -> list[str]:
    subjects = [names.job_kind_subject(f"j{i}", k) for i in range(rounds) for k in KINDS]
    await asyncio.gather(*[await js.publish_async(s, b"{}") for s in subjects])
    return subjects


async def test_a_backlog_then_live_events_arrive_once_in_order_without_lines(
    settings: Settings, js: JetStreamContext
) -> None:
    """Started behind a backlog, the reader gets every update once, then the live ones too."""
    names = Names(settings.prefix)
    backlog = await publish(js, names, 300)
    seen: list[str] = []
    reader = update_messages(js, names, 1, 0.2, 1024 * 1024)
    async with asyncio.timeout(60):
        while len(seen) < len(backlog) * 4 // 7:
            seen += [m.subject for m in await anext(reader)]
        # Caught up: the next read hands over to the live consumer; the events after it come too.
        await anext(reader)
        live = await publish(js, names, 50)
        while len(seen) < (len(backlog) + len(live)) * 4 // 7:
            seen += [m.subject for m in await anext(reader)]
    await reader.aclose()
    assert seen == [s for s in backlog + live if not s.endswith(".lines")]
