"""The all-jobs stream (``/api/jobs/stream``) tells its viewer when NATS stops answering the API
(a real nats-server SIGSTOPped) and when it answers again, as a job's own stream does: SSE
``stale``. A freeze shorter than ``nats_silence_seconds`` tells nothing, a longer one tells
both, and the job updates go on across it, none lost or repeated. (Before, the jobs list said
nothing: a viewer without a live job card saw a list that had simply stopped changing.)"""

from __future__ import annotations

import asyncio

import httpx
import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.sse_client import SseEvent, iter_events
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.nats_silence import BOUND, LONGER, SHORTER, started_job, thaw_after
from tests.ui_support import TERMINAL


@pytest.fixture
def settings(settings: Settings, own_nats: EmbeddedNats) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=TEST_TYPES, nats_url=own_nats.url, nats_silence_seconds=BOUND
    )


def ends(event: SseEvent, job_id: str) -> bool:
    return (
        event.event == "job_update"
        and event.json["jobId"] == job_id
        and event.json["status"] in TERMINAL
    )


async def updates_until_the_end(
    client: httpx.AsyncClient, job_id: str, own_nats: EmbeddedNats, freeze_for: float
) -> list[SseEvent]:
    """Every job's updates from the stream's start until the job's end (and, after a ``stale``
    true, its ``stale`` false), NATS frozen for ``freeze_for`` (if any) once the job runs."""
    seen: list[SseEvent] = []
    frozen = not freeze_for
    async with client.stream("GET", "/api/jobs/stream", params={"after": 0}) as response:
        assert response.status_code == 200
        async for event in iter_events(response):
            seen.append(event)
            assert event.event in {"job_update", "batch_update", "stale"}, event
            if (
                not frozen
                and event.event == "job_update"
                and event.json["jobId"] == job_id
                and event.json["status"] == "running"
            ):
                thaw_after(own_nats, freeze_for)
                frozen = True
            stale = [e.json["stale"] for e in seen if e.event == "stale"]
            if any(ends(e, job_id) for e in seen) and stale[-1:] != [True]:
                return seen
    raise AssertionError("the stream ended")


@pytest.mark.parametrize(("freeze_for", "told"), [(SHORTER, False), (LONGER, True)])
async def test_all_jobs_stream_tells_a_nats_silence_and_loses_no_update(
    system: System, own_nats: EmbeddedNats, freeze_for: float, told: bool
) -> None:
    """The all-jobs viewer while NATS freezes: ``stale`` true then false for a freeze past the
    bound, nothing for a shorter one; every job update once, in order, either way."""
    async with system.client() as client:
        job_id = await started_job(client, 200)
        async with asyncio.timeout(90):
            seen = await updates_until_the_end(client, job_id, own_nats, freeze_for)
            # Read again once all is quiet: what the viewer should have seen.
            again = await updates_until_the_end(client, job_id, own_nats, 0)
    stale = [event.json for event in seen if event.event == "stale"]
    if told:
        assert [s["stale"] for s in stale] == [True, False], stale
        assert stale[0]["code"] == "NATS_SILENT"
        # Told while it lasted: before the job's end, which the freeze held back.
        first_stale = next(i for i, e in enumerate(seen) if e.event == "stale")
        assert first_stale < next(i for i, e in enumerate(seen) if ends(e, job_id))
    else:
        assert stale == []
    assert all(event.id is None for event in seen if event.event == "stale")

    def updates(events: list[SseEvent]) -> list[str | None]:
        upto = next(i for i, e in enumerate(events) if ends(e, job_id))
        return [e.id for e in events[: upto + 1] if e.event != "stale"]

    assert updates(seen) == updates(again)
