"""The all-jobs stream holds a read that touched a batch until the projector has applied it (the
batch's row is what it sends). The projector's notices come through NATS, so a NATS that goes
silent holds that wait too: the viewer is told ``stale`` as soon as the API's watch says so, not
a keep-alive interval later (it used to be checked once per keep-alive there: up to 15 s late)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.batch_support import batch_events
from tests.history_support import publish
from tests.sse_client import SseEvent, iter_events
from tests.system import System
from tests.tools.nats_silence import BOUND, LONGER, thaw_after

# Far longer than the silence bound: a ``stale`` told only at the keep-alive comes this late.
KEEPALIVE = 60.0
# How long the test waits for each ``stale``: well past the bound and the freeze, well short of
# the keep-alive interval.
TOLD_WITHIN = KEEPALIVE / 2


@pytest.fixture
def settings(settings: Settings, own_nats: EmbeddedNats) -> Settings:
    return msgspec.structs.replace(
        settings,
        nats_url=own_nats.url,
        nats_silence_seconds=BOUND,
        sse_keepalive_seconds=KEEPALIVE,
    )


async def test_a_viewer_waiting_for_a_batch_row_is_told_nats_went_silent_and_came_back(
    projector_and_api: System, settings: Settings, own_nats: EmbeddedNats
) -> None:
    """A batch's events read while the projector is away (the read waits for it), then NATS
    frozen past the bound: ``stale`` true, then false once it thaws; the batch's row follows
    once the projector is back."""
    system = projector_and_api
    await system.wait_read_models()  # the stream opens where they are: 503 until made
    async with system.client() as client, client.stream("GET", "/api/jobs/stream") as response:
        assert response.status_code == 200
        events = iter_events(response)

        async def next_frame() -> SseEvent:
            async with asyncio.timeout(TOLD_WITHIN):
                return await anext(events)

        await system.stop_service("projector")
        await publish(settings, batch_events("b1", 1))
        # The stream reads the batch's events at once and then waits for the projector;
        # nothing it sends shows that, so give the read a moment before the freeze.
        await asyncio.sleep(1.0)
        thaw_after(own_nats, LONGER)
        silent = await next_frame()
        assert (silent.event, silent.json["stale"]) == ("stale", True), silent
        back = await next_frame()
        assert (back.event, back.json["stale"]) == ("stale", False), back

        await system.start_projector()
        frame = await next_frame()
        while frame.event == "job_update":
            frame = await next_frame()
        assert frame.event == "batch_update", frame
        assert frame.json["id"] == "b1"
