"""Live batch counters: GET /api/jobs/stream sends batch_update (the batch's row) whenever a
batch's counters or status change, in sequence order with the job_update events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from tests.batch_support import batch_events, ended
from tests.history_support import publish, wait_projected
from tests.sse_client import SseEvent, iter_events
from tests.system import System

KEEPALIVE = 0.5


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short keep-alives (for ``projector_and_api``: projector and API with tokens, no runner)."""
    return msgspec.structs.replace(settings, sse_keepalive_seconds=KEEPALIVE)


class Watcher:
    """Reads a stream's events in the background, so a test can wait for some with a deadline
    and look again later."""

    def __init__(self, response: Any) -> None:
        self._queue: asyncio.Queue[SseEvent] = asyncio.Queue()
        self._task = asyncio.create_task(self._read(response))

    async def _read(self, response: Any) -> None:
        async for event in iter_events(response):
            await self._queue.put(event)

    async def until(self, wanted: Any, timeout: float = 30.0) -> list[SseEvent]:
        """Events up to and including the first for which ``wanted`` holds."""
        seen: list[SseEvent] = []
        async with asyncio.timeout(timeout):
            while True:
                seen.append(await self._queue.get())
                if wanted(seen[-1]):
                    return seen

    def received(self) -> list[SseEvent]:
        """What arrived and was not taken yet."""
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


@contextlib.asynccontextmanager
async def watching(client: Any, path: str, **kwargs: Any) -> AsyncIterator[Watcher]:
    async with client.stream("GET", path, **kwargs) as response:
        assert response.status_code == 200
        watcher = Watcher(response)
        try:
            yield watcher
        finally:
            await watcher.close()


def batch_done(event: SseEvent) -> bool:
    return event.event == "batch_update" and event.json["status"] in ("completed", "failed")


async def test_batch_update_follows_the_counters_to_the_end(
    projector_and_api: System, settings: Settings
) -> None:
    """Watching the stream, a batch's counters move with its jobs and end exact, completed, in
    the update of the event that completed the batch. (An update of an earlier event may already
    show later counters: its row is read once the projector has applied that event, and the
    projector may have applied the next ones in the same transaction.)"""
    await publish(settings, batch_events("b1", 3))
    async with (
        projector_and_api.client() as client,
        watching(client, "/api/jobs/stream?after=0") as watcher,
    ):
        first = await watcher.until(lambda e: e.event == "batch_update")
        for index in range(3):
            last = await publish(settings, ended(f"b1-{index}", JobStatus.COMPLETED))
        rest = await watcher.until(lambda e: e.event == "batch_update" and e.id == str(last))
    created = first[-1].json
    assert (created["id"], created["total_jobs"], created["pending_jobs"]) == ("b1", 3, 3)
    assert batch_done(rest[-1])
    final = rest[-1].json
    assert (final["status"], final["completed_jobs"], final["pending_jobs"]) == ("completed", 3, 0)
    assert final["progress_percent"] == 100.0
    ids = [int(e.id) for e in first + rest if e.id is not None]
    assert ids == sorted(ids)


async def test_batch_update_shows_a_batch_event_with_its_sequence(
    projector_and_api: System, settings: Settings
) -> None:
    """A batch event alone (failing a batch) sends the batch's row, id = that event's sequence."""
    await wait_projected(settings, await publish(settings, batch_events("b1", 2)))
    async with (
        projector_and_api.client() as client,
        watching(client, "/api/jobs/stream") as watcher,
    ):
        seq = await publish(settings, [events.BatchFailed(batch_id="b1", reason="stop now")])
        [update] = await watcher.until(lambda e: e.event == "batch_update")
    assert update.id == str(seq)
    assert (update.json["status"], update.json["failed_reason"]) == ("failed", "stop now")


async def test_resume_after_a_batch_update_repeats_nothing(
    projector_and_api: System, settings: Settings
) -> None:
    """Reconnecting with the id of a batch_update yields only later changes, none twice."""
    stream = batch_events("b1", 2) + ended("b1-0", JobStatus.COMPLETED)
    last = await publish(settings, stream)
    async with projector_and_api.client() as client:
        async with watching(client, "/api/jobs/stream?after=0") as watcher:
            first = await watcher.until(lambda e: e.id == str(last) and e.event == "batch_update")
        headers = {"Last-Event-ID": str(last)}
        async with watching(client, "/api/jobs/stream", headers=headers) as watcher:
            await publish(settings, ended("b1-1", JobStatus.COMPLETED))
            rest = await watcher.until(batch_done)
    assert first[-1].json["completed_jobs"] == 1
    assert all(int(e.id or 0) > last for e in rest)
    assert len({(e.event, e.id) for e in rest}) == len(rest)
    jobs = [e.json["status"] for e in rest if e.event == "job_update"]
    assert jobs == ["running", "completed"]
    # The batch's frame follows each read of the stream that changed it: one for b1-1's start and
    # end read together, or one for each (its running count changes) when they come apart.
    batches = [e.json["status"] for e in rest if e.event == "batch_update"]
    assert batches in (["completed"], ["running", "completed"])


async def test_own_jobs_token_gets_batch_updates_only_of_its_batches(
    projector_and_api: System, settings: Settings
) -> None:
    """A token limited to its own jobs never receives another token's batch."""
    await publish(
        settings,
        batch_events("theirs", 1, requested_by="bob") + batch_events("mine", 1, requested_by="al"),
    )
    token = await projector_and_api.create_token("al", "operator", own_jobs_only=True)
    async with (
        projector_and_api.client(token=token) as client,
        watching(client, "/api/jobs/stream?after=0") as watcher,
    ):
        await publish(settings, ended("theirs-0", JobStatus.COMPLETED))
        seq = await publish(settings, ended("mine-0", JobStatus.COMPLETED))
        seen = await watcher.until(lambda e: e.id is not None and int(e.id) >= seq)
    batches = {e.json["id"] for e in seen if e.event == "batch_update"}
    jobs = {e.json["jobId"] for e in seen if e.event == "job_update"}
    assert batches == {"mine"}
    assert jobs == {"mine-0"}


async def test_batch_update_waits_for_a_stopped_projector(
    projector_and_api: System, settings: Settings
) -> None:
    """While the projector is stopped a batch_update is held (keep-alives go on); once it is
    back, the update arrives with the counters exact."""
    await wait_projected(settings, await publish(settings, batch_events("b1", 2)))
    async with (
        projector_and_api.client() as client,
        watching(client, "/api/jobs/stream") as watcher,
    ):
        await projector_and_api.stop_service("projector")
        await publish(
            settings, ended("b1-0", JobStatus.COMPLETED) + ended("b1-1", JobStatus.FAILED)
        )
        # Longer than a keep-alive interval several times over: the wait goes on past each.
        await asyncio.sleep(4 * KEEPALIVE)
        early = watcher.received()
        await projector_and_api.start_projector()
        [*_, update] = await watcher.until(batch_done)
    assert [e for e in early if e.event == "batch_update"] == []
    assert (update.json["status"], update.json["completed_jobs"], update.json["failed_jobs"]) == (
        "failed",
        1,
        1,
    )
