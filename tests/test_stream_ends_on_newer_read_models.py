"""The all-jobs stream while a newer jobrunner's read models take the place of this one's. The
API's watch learns the stored version; from then on every read the stream makes is refused
(its tables are not ours). A batch's row held for the projector used to be waited for with
keep-alives for ever, every later frame held behind it and the client never told. The stream now
ends with an ``unavailable`` frame naming ``READ_MODELS_NEWER``, and the reconnect is answered
503 ``READ_MODELS_NEWER``."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from jobrunner.common import readmodelversion
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.contracts.events import JobStatus
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api import readmodelgate, streamlookups
from tests.batch_support import batch_events, ended
from tests.history_support import job_events, publish, wait_projected
from tests.sse_client import SseStream
from tests.system import System
from tests.tools.api_parts import gate_of
from tests.tools.postgres_processes import frozen_postgres
from tests.tools.stream_reading import read_into, until

pytestmark = pytest.mark.timeout(180)

KEEPALIVE = 0.5
# Keep-alives a stream that stays open sends after the API learnt the version: enough for one
# that ends to have ended (the end needs one read of the stream's, made every keep-alive).
KEPT_ALIVE = 8
# A look-up of a frozen Postgres is given up after this.
BOUND = 2.0


@pytest.fixture
def settings(settings: Settings, own_postgres: EmbeddedPostgres) -> Settings:
    """Short keep-alives and look-ups; a Postgres of the test's own (its version is changed,
    it is frozen)."""
    return msgspec.structs.replace(
        settings,
        database_url=own_postgres.url,
        sse_keepalive_seconds=KEEPALIVE,
        stream_read_timeout_seconds=BOUND,
    )


async def test_a_stream_holding_a_batch_row_ends_once_newer_read_models_are_in_place(
    monkeypatch: pytest.MonkeyPatch, projector_and_api: System
) -> None:
    """A batch's job ends while the projector is stopped: the stream holds the batch's row for
    it. A newer jobrunner's version is stored meanwhile and the API's watch learns it: the stream
    says ``unavailable`` ``READ_MODELS_NEWER`` and ends; its reconnect is answered 503."""
    monkeypatch.setattr(readmodelgate, "CURRENT_CHECK_SECONDS", 0.2)  # the watch learns soon
    system = projector_and_api
    settings = system.settings
    await wait_projected(settings, await publish(settings, batch_events("nb", 1)))
    gate = gate_of(system)
    seen = SseStream()
    async with (
        system.client() as client,
        asyncio.timeout(120),
        client.stream("GET", "/api/jobs/stream?after=0") as response,
    ):
        assert response.status_code == 200, await response.aread()
        reader = asyncio.create_task(read_into(response, seen))
        try:
            await until(reader, lambda: any(e.event == "batch_update" for e in seen.events))
            await system.stop_service("projector")  # the job's end is not applied: held
            await publish(settings, ended("nb-0", JobStatus.COMPLETED))
            waited = len(seen.comments)
            await until(reader, lambda: len(seen.comments) >= waited + 2)
            await store_version(settings, readmodelversion.READMODEL_VERSION + 1)
            while gate.serving:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the watch looks on its own
            learnt = len(seen.comments)
            while not reader.done() and len(seen.comments) < learnt + KEPT_ALIVE:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        finally:
            reader.cancel()
        again = await client.get("/api/jobs/stream?after=0")
    told = [e for e in seen.events if e.event == "unavailable"]
    assert [e.json["code"] for e in told] == ["READ_MODELS_NEWER"], (
        f"the stream stayed open with {len(seen.comments) - learnt} keep-alives after the API "
        f"learnt the newer version; events: {[e.event for e in seen.events]}"
    )
    assert seen.events[-1].event == "unavailable", [e.event for e in seen.events]
    assert again.status_code == 503, again.text
    assert again.json()["error"]["code"] == "READ_MODELS_NEWER", again.text


async def test_a_stream_whose_probe_meets_newer_read_models_ends(
    monkeypatch: pytest.MonkeyPatch, projector_and_api: System, own_postgres: EmbeddedPostgres
) -> None:
    """A job the stream does not know ends while Postgres is frozen: its look-up fails, and the
    stream asks at its keep-alives whether reads answer again. After the thaw the API learns that
    the tables are a newer jobrunner's; nothing more is published, so the stream's asking is its
    only read: it meets the newer version, and the stream says ``unavailable``
    ``READ_MODELS_NEWER`` and ends."""
    monkeypatch.setattr(readmodelgate, "CURRENT_CHECK_SECONDS", 0.2)  # the watch learns soon
    monkeypatch.setattr(streamlookups, "PAUSE_SECONDS", 0.5)  # the asking begins soon after
    system = projector_and_api
    settings = system.settings
    requested, *rest = job_events("probed-newer", "emit", status=JobStatus.RUNNING)
    await wait_projected(settings, await publish(settings, [requested, *rest]))
    await system.stop_service("projector")  # it would not serve a newer version either
    gate = gate_of(system)
    seen = SseStream()
    async with (
        system.client() as client,
        asyncio.timeout(120),
        # No ``after``: the stream starts after what the read models show; it knows no job.
        client.stream("GET", "/api/jobs/stream") as response,
    ):
        assert response.status_code == 200, await response.aread()
        reader = asyncio.create_task(read_into(response, seen))
        try:
            with frozen_postgres(own_postgres):
                end = await publish(settings, ended("probed-newer", JobStatus.COMPLETED))
                await until(reader, lambda: any(e.id == str(end) for e in seen.events))
            await store_version(settings, readmodelversion.READMODEL_VERSION + 1)
            while gate.serving:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the watch looks on its own
            learnt = len(seen.comments)
            while not reader.done() and len(seen.comments) < learnt + KEPT_ALIVE:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        finally:
            reader.cancel()
    shown = [e.json for e in seen.events if e.event == "job_update"]
    assert shown, [e.event for e in seen.events]
    assert all(s["jobType"] is None for s in shown), shown  # from the events: look-ups failed
    told = [e for e in seen.events if e.event == "unavailable"]
    assert [e.json["code"] for e in told] == ["READ_MODELS_NEWER"], (
        f"the stream stayed open with {len(seen.comments) - learnt} keep-alives after the API "
        f"learnt the newer version; events: {[e.event for e in seen.events]}"
    )
    assert seen.events[-1].event == "unavailable", [e.event for e in seen.events]


async def store_version(settings: Settings, version: int) -> None:
    """The read models' stored version, as a newer jobrunner's projector would leave it."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            f"UPDATE {READ_SCHEMA}.{readmodelversion.VERSION_TABLE} SET version = $1", version
        )
    finally:
        await conn.close()
