"""The API's shutdown ends a replaced content's purge that is still waiting for its readers,
even when the purge's cancel is lost, and waits for it at most ``PURGE_STOP_SECONDS``.

The purge looks for readers (a JetStream request) every grace; 3.11's wait_for loses a cancel
that comes with the reply, and the purge then looked again for as long as a reader was there:
``stop_purges``, and the API's shutdown with it, waited that long. Here a real consumer reads the
content and the cancel is lost after a real look."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js import JetStreamContext, api
from structlog.testing import capture_logs

from jobrunner.common import artifactstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.lostcancel import CancelLostInAPause

GRACE = 0.2


@pytest.fixture
async def read_nuid(js: JetStreamContext, settings: Settings) -> AsyncIterator[str]:
    """A content some download reads: a consumer on its chunks, as a download's."""
    names = Names(settings.prefix)
    nuid = uuid.uuid4().hex
    reader = await js.add_consumer(
        artifactstore.stream_name(names),
        api.ConsumerConfig(
            filter_subject=artifactstore.chunk_subject(names, nuid), inactive_threshold=60
        ),
    )
    yield nuid
    await js.delete_consumer(artifactstore.stream_name(names), reader.name)


async def _finish(task: asyncio.Task[None]) -> None:
    """No purge left on the loop the later tests share (a failed test's): a second cancel
    ends one whose first was lost; a deaf look ends with its hold."""
    task.cancel()
    await asyncio.wait({task}, timeout=30)


async def test_a_purge_whose_cancel_was_lost_in_a_look_ends_on_the_apis_stop(
    js: JetStreamContext, settings: Settings, read_nuid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_being_read = artifactstore._being_read
    losing = CancelLostInAPause()

    async def being_read_losing_a_cancel(*args: Any) -> bool:
        read = await real_being_read(*args)
        await losing.pause(30)  # until the cancel comes: it arrives with the reply
        return read

    monkeypatch.setattr(artifactstore, "_being_read", being_read_losing_a_cancel)
    artifactstore.purge_when_unread(js, Names(settings.prefix), read_nuid, GRACE)
    purge = artifactstore._REPLACED_PURGES[read_nuid]
    try:
        await asyncio.wait_for(losing.reached.wait(), 30)  # a look (a real consumer found) ended
        stopping = asyncio.create_task(artifactstore.stop_purges(js))  # the API's shutdown
        done, _ = await asyncio.wait({stopping}, timeout=10)
        assert losing.lost == 1
        assert done, "the API's shutdown waited for a purge whose content is still read"
        assert purge.done()
    finally:
        await _finish(purge)


@pytest.mark.parametrize(
    ("look_holds", "ends"),
    [(1.5, True), (6.0, False)],
    ids=["within-the-bound", "past-the-bound"],
)
async def test_a_purge_deaf_to_its_stop_holds_the_apis_stop_at_most_its_bound(
    js: JetStreamContext,
    settings: Settings,
    read_nuid: str,
    monkeypatch: pytest.MonkeyPatch,
    look_holds: float,
    ends: bool,
) -> None:
    """``PURGE_STOP_SECONDS`` (3 s here): a look that ignores every cancel and holds 1.5 s is
    waited for; one that holds 6 s is left, said in the log, and the shutdown goes on."""
    monkeypatch.setattr(artifactstore, "PURGE_STOP_SECONDS", 3.0)
    real_being_read = artifactstore._being_read
    looking = asyncio.Event()

    async def being_read_deaf_to_cancels(*args: Any) -> bool:
        held = asyncio.ensure_future(asyncio.sleep(look_holds))
        read = await real_being_read(*args)
        looking.set()
        while not held.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({held})
        return read

    monkeypatch.setattr(artifactstore, "_being_read", being_read_deaf_to_cancels)
    artifactstore.purge_when_unread(js, Names(settings.prefix), read_nuid, GRACE)
    purge = artifactstore._REPLACED_PURGES[read_nuid]
    try:
        await asyncio.wait_for(looking.wait(), 30)
        with capture_logs() as logs:
            stopping = asyncio.create_task(artifactstore.stop_purges(js))
            done, _ = await asyncio.wait({stopping}, timeout=30)
        assert done, "the API's shutdown waited past the purges' bound"
        assert purge.done() == ends
        left = [e for e in logs if e["event"] == "a loop did not end on its stop: left running"]
        assert [e["loop"] for e in left] == ([] if ends else [f"artifact-purge-{read_nuid}"])
    finally:
        await _finish(purge)
