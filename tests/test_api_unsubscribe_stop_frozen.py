"""The API's stop unsubscribes from the projector's notices within ``UNSUBSCRIBE_STOP_SECONDS``,
even when nats-py cannot take the UNSUB: NATS froze while requests were publishing, its flusher
is stuck on a full socket and its flush queue is full (1,024 flushes asked), and every call that
asks for one more (an unsubscribe does) waits until NATS answers again. The stop waited for it
with no bound. Here NATS is frozen for real, its connection clogged by real publishes, and it
thaws just before or just after the bound."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from litestar import Litestar
from structlog.testing import capture_logs

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import context
from tests.tools.clogged_nats import (
    BOUND,
    STOP_SECONDS,
    THAWED_EITHER_SIDE_OF_THE_BOUND,
    ends_by_its_deadline,
    frozen_and_clogged,
)

NOT_UNSUBSCRIBED = "the projector's notices not unsubscribed: the close ends them"


@THAWED_EITHER_SIDE_OF_THE_BOUND
async def test_the_apis_stop_unsubscribes_its_notices_within_the_bound(
    settings: Settings,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    frozen_for: float,
    unsubscribed: bool,
) -> None:
    """NATS thawed 1 s into the stop: the notices are unsubscribed and nothing is said. Thawed
    5 s into it, past the 3 s bound: the unsubscribe is left (the close ends it), said in the
    log, and the stop goes on; it used to wait for the thaw."""
    monkeypatch.setattr(eventstore, "UNSUBSCRIBE_STOP_SECONDS", BOUND)
    api = msgspec.structs.replace(settings, nats_url=own_nats.url)
    app = Litestar()
    running = context.lifespan(api)(app)
    await running.__aenter__()
    exited = False
    try:
        async with frozen_and_clogged(own_nats, app.state.ctx.nc, thawed_after=frozen_for):
            with capture_logs() as logs:
                exited = True
                began = time.monotonic()
                await asyncio.wait_for(running.__aexit__(None, None, None), 60)
                print(f"stop took {time.monotonic() - began:.2f} s")
        said = [e for e in logs if e["event"] == NOT_UNSUBSCRIBED]
        assert len(said) == (0 if unsubscribed else 1), said
    finally:
        if not exited:
            await running.__aexit__(None, None, None)


async def test_the_apis_stop_ends_by_its_deadline_with_nats_frozen_throughout(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS frozen, its connection clogged, and not thawed until the stop is over: the stop
    ends within its deadline (a log line at the bound alone would not show it: a stop that
    logged and then waited for NATS all the same passed)."""
    api = msgspec.structs.replace(settings, nats_url=own_nats.url, stop_seconds=STOP_SECONDS)
    app = Litestar()
    running = context.lifespan(api)(app)
    await running.__aenter__()
    exited = False
    try:
        async with frozen_and_clogged(own_nats, app.state.ctx.nc):
            exited = True
            await ends_by_its_deadline(running.__aexit__(None, None, None))
    finally:
        if not exited:
            await running.__aexit__(None, None, None)
