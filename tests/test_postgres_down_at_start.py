"""Services started while Postgres is down (stopped, or frozen: a connect that hangs) start all
the same, and recover with no restart once it is back: the API answers at once (health says
why, reads refuse with their codes, jobs are started and run), the projector waits for Postgres
with one log line per outage, the runner and the notifier never need it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common import eventstore
from jobrunner.common.logging import LogThrottle
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api import errors
from jobrunner.services.api.readmodelgate import ReadModelGate
from jobrunner.services.projector import outage, upgrade
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.api_parts import gate_of
from tests.tools.began import began_event
from tests.tools.captured_logs import lines_of, until_logged
from tests.tools.health_reports import codes, health
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.postgres_processes import frozen_postgres
from tests.tools.status_history import statuses
from tests.tools.throttled_lines import watched

pytestmark = pytest.mark.timeout(180)

# The API's read deadline and health's bound (also the bound of the API's looks at the read
# models' version while it has not learned it), short so that the tests stay fast.
READ_DEADLINE = 2.5
HEALTH_BOUND = 1.0


@pytest.fixture
def down_settings(settings: Settings, own_postgres: EmbeddedPostgres) -> Settings:
    return msgspec.structs.replace(
        settings,
        database_url=own_postgres.url,
        job_types_file=TEST_TYPES,
        api_read_timeout_seconds=READ_DEADLINE,
        health_postgres_timeout_seconds=HEALTH_BOUND,
    )


@pytest.fixture
async def system(down_settings: Settings) -> AsyncIterator[System]:
    """Nothing started yet: each test starts the services it means to, and when."""
    async with System(down_settings) as running:
        yield running


async def post_job(system: System) -> str:
    """A job started without waiting for the read models (``wait=stored``)."""
    async with system.client() as client:
        response = await client.post(
            "/api/jobs?wait=stored", json={"job_type": "emit", "parameters": {"lines": 3}}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def until_completed_in_the_stream(settings: Settings, job_id: str) -> None:
    """Until the job's ``completed`` is stored in JetStream (a runner ran it)."""
    nc = await eventstore.connect(settings, "test")
    try:
        js = nc.jetstream()
        async with asyncio.timeout(60):
            while "completed" not in await statuses(js, Names(settings.prefix), job_id):  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # stored by the runner: read the stream again
    finally:
        await eventstore.close(nc)


async def read(system: System, path: str) -> tuple[int, dict[str, Any]]:
    async with system.client() as client:
        response = await client.get(path)
    return response.status_code, response.json()


async def served_again(system: System, job_id: str) -> dict[str, Any]:
    """Until the API serves the job from the read models, on its own (nothing restarted)."""
    last: tuple[int, dict[str, Any]] | None = None
    try:
        async with asyncio.timeout(60):
            while (last := await read(system, f"/api/jobs/{job_id}"))[0] != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # only HTTP tells
    except TimeoutError:
        raise AssertionError(f"not served 60 s after Postgres came back; last: {last}") from None
    assert last is not None
    return last[1]


async def start_postgres(server: EmbeddedPostgres) -> None:
    await asyncio.to_thread(server.start)


async def test_the_api_starts_while_postgres_is_stopped_and_recovers_when_it_is_back(
    system: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres stopped at the API's start: the API starts; health says 503 POSTGRES_UNREACHABLE
    with a sentence, a read 503 READ_MODELS_UNAVAILABLE; a job posted with ``wait=stored`` is
    run by a runner and its stream is served from NATS. Once Postgres and the projector are
    up, the API serves the job and health is ok on Postgres, with no restart. (Before: the
    API's start failed, the read pool's first connection refused.)"""
    # A throttle of its own: an earlier test's line within the interval would leave out this
    # test's first.
    monkeypatch.setattr(errors, "POSTGRES_AWAY_LOG", LogThrottle(errors.REFUSAL_LOG_INTERVAL))
    await asyncio.to_thread(own_postgres.stop)
    await system.start_runner()
    await system.start_notifier()
    with capture_logs() as logs, watched() as watch:
        await system.start_api()
        report = await health(system)
        assert report["http_status"] == 503, report
        assert "POSTGRES_UNREACHABLE" in codes(report), report
        assert all(p["message"] for p in report["problems"]), report
        status, body = await read(system, "/api/jobs")
        assert status == 503, body
        assert body["error"]["code"] == "READ_MODELS_UNAVAILABLE", body
        assert body["error"]["message"]
        job_id = await post_job(system)
        await until_completed_in_the_stream(system.settings, job_id)
        async with system.client() as client:
            stream = await read_stream(client, f"/api/jobs/{job_id}/stream")
        assert [e.json["seq"] for e in stream.events if e.event == "message"] == [1, 2, 3]
        for _ in range(20):  # refused again and again: the lines say it once
            assert (await read(system, "/api/jobs"))[0] == 503
    refusals = lines_of(logs, "read models unavailable")
    assert 1 <= len(refusals) <= watch.lines_allowed(errors.REFUSAL_LOG_INTERVAL), refusals
    assert not [line for line in logs if line["log_level"] in ("error", "critical")], logs
    await start_postgres(own_postgres)
    await system.start_projector()
    row = await served_again(system, job_id)
    assert row["status"] == "completed", row
    assert gate_of(system).known
    report = await health(system)
    assert report["postgres"] is True, report
    assert not {"POSTGRES_UNREACHABLE", "POSTGRES_TIMEOUT"} & set(codes(report)), report


async def test_the_api_starts_while_postgres_is_frozen_and_recovers_after_the_thaw(
    system: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres frozen at the API's start, longer than any bound: the API starts while it is
    still frozen; health says 503 POSTGRES_TIMEOUT, a read 503 READ_MODELS_TIMEOUT; a job is
    started. After the thaw the API learns the read models' version and serves them. (Before:
    the read pool's first connect hung, then failed the start.)"""
    # A throttle of its own: another test's line within the interval would leave this one out.
    monkeypatch.setattr(errors, "POSTGRES_TIMEOUT_LOG", LogThrottle(errors.REFUSAL_LOG_INTERVAL))
    await system.start_runner()
    with frozen_postgres(own_postgres):
        await system.start_api()  # while frozen: the start does not wait for Postgres
        assert not gate_of(system).known
        report = await health(system)
        assert report["http_status"] == 503, report
        assert "POSTGRES_TIMEOUT" in codes(report), report
        job_id = await post_job(system)
        with capture_logs() as logs, watched() as watch:
            for _ in range(3):  # each past the read deadline: the lines say it once
                status, body = await read(system, "/api/jobs")
                assert status == 503, body
                assert body["error"]["code"] == "READ_MODELS_TIMEOUT", body
        timeouts = lines_of(logs, "read models did not answer in time")
        assert 1 <= len(timeouts) <= watch.lines_allowed(errors.REFUSAL_LOG_INTERVAL), timeouts
        await until_completed_in_the_stream(system.settings, job_id)
    await system.start_projector()
    row = await served_again(system, job_id)
    assert row["status"] == "completed", row
    assert gate_of(system).known


async def test_a_freeze_just_shorter_than_the_first_look_is_waited_out(
    system: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres frozen at the API's start for less than the first look at the read models'
    version may take (``health_postgres_timeout_seconds``): the API knows the version when it
    starts serving. The thaw is timed from the look's beginning (a loaded machine may take
    longer than the freeze to reach it), at 0.7 of its bound."""
    looking = began_event(monkeypatch, ReadModelGate, "check")
    with frozen_postgres(own_postgres):
        starting = asyncio.create_task(system.start_api())
        async with asyncio.timeout(30):
            await looking.wait()  # the look began during the freeze
        await asyncio.sleep(HEALTH_BOUND * 0.7)  # the fault's length, from the look's beginning
        assert not starting.done()  # the look waits for the frozen Postgres
    await starting
    assert gate_of(system).known


async def test_a_freeze_just_longer_than_the_first_look_starts_without_the_version(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """Frozen longer than the first look's bound: the API starts serving before the thaw,
    without the version, and learns it after the thaw."""
    with frozen_postgres(own_postgres):
        await system.start_api()
        await asyncio.sleep(HEALTH_BOUND * 1.5)  # the fault lasts past the bound
        assert not gate_of(system).known
    await system.start_projector()
    await system.wait_read_models()
    async with asyncio.timeout(30):
        while not gate_of(system).known:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the gate's watch looks on its own


async def test_the_projector_waits_for_a_stopped_postgres_with_one_line_and_starts(
    system: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres stopped at the projector's start: the projector does not exit; it says once
    that it waits for Postgres (where, what to do), and once Postgres is back it starts and
    says how long it waited. (Before: its start failed, connection refused.)"""
    monkeypatch.setattr(outage, "RETRY_PAUSE_MAX", 0.2)  # many tries during the outage
    await asyncio.to_thread(own_postgres.stop)
    with capture_logs() as logs:
        await system.start_projector()
        await until_logged(logs, outage.WAITING_EVENT)
        await asyncio.sleep(2)  # tried again and again meanwhile
        assert not system._tasks["projector"].done()
        await start_postgres(own_postgres)
        await until_logged(logs, "projector started")
    waiting = lines_of(logs, outage.WAITING_EVENT)
    assert len(waiting) == 1, waiting
    assert own_postgres.url.split("@")[1].split("/")[0] in waiting[0]["postgres"], waiting
    assert "database_url" in waiting[0]["what_to_do"], waiting
    back = lines_of(logs, outage.BACK_EVENT)
    assert len(back) == 1, back
    assert back[0]["attempts"] > 2, back
    assert not [line for line in logs if line["log_level"] in ("error", "critical")], logs


async def test_the_projector_waits_for_a_frozen_postgres_longer_than_its_connect_bound(
    system: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen longer than the projector's connect bound (``outage.CONNECT_SECONDS``): it says
    once that it waits, and starts after the thaw. (Before: its pool's connect hung for
    asyncpg's 60 s, then the start failed.)"""
    monkeypatch.setattr(outage, "CONNECT_SECONDS", 1.0)
    with capture_logs() as logs:
        with frozen_postgres(own_postgres):
            await system.start_projector()
            await until_logged(logs, outage.WAITING_EVENT)
            await asyncio.sleep(1.5)  # the fault lasts past the bound
            assert not lines_of(logs, "projector started")
        await until_logged(logs, "projector started")
    assert len(lines_of(logs, outage.WAITING_EVENT)) == 1
    assert len(lines_of(logs, outage.BACK_EVENT)) == 1


async def test_the_projector_waits_out_a_freeze_just_shorter_than_its_connect_bound(
    system: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen for less than the connect bound: the first connect waits it out; no line says
    the projector waits for Postgres. The thaw is timed from the connect's beginning, at 0.7 of
    its bound."""
    monkeypatch.setattr(outage, "CONNECT_SECONDS", 4.0)
    connecting = began_event(monkeypatch, outage, "until_postgres_answers")
    with capture_logs() as logs:
        with frozen_postgres(own_postgres):
            await system.start_projector()
            async with asyncio.timeout(30):
                await connecting.wait()  # the connect began during the freeze
            await asyncio.sleep(outage.CONNECT_SECONDS * 0.7)  # the fault, from the connect on
            assert not lines_of(logs, "projector started")
        await until_logged(logs, "projector started")
    assert not lines_of(logs, outage.WAITING_EVENT)


async def test_a_running_projector_says_an_outage_once_and_when_it_is_over(
    system: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres stopped under a running projector while a job is posted: the batch is retried
    again and again, said in one line (with what to do), and one line once it is applied.
    (Before: one error line per attempt.)"""
    monkeypatch.setattr(outage, "RETRY_PAUSE_MAX", 0.2)  # many tries during the outage
    with capture_logs() as started:
        await system.start_projector()
        # Stopped once the projector runs, not within its start (the test below).
        await until_logged(started, "projector started")
    await system.start_api()
    await asyncio.to_thread(own_postgres.stop)
    with capture_logs() as logs:
        job_id = await post_job(system)
        await until_logged(logs, "projector cannot apply a batch; retrying it")
        await asyncio.sleep(2)  # tried again and again meanwhile
        await start_postgres(own_postgres)
        await until_logged(logs, "projector applied the batch after an outage")
    retries = lines_of(logs, "projector cannot apply a batch; retrying it")
    assert len(retries) == 1, retries
    assert "database_url" in retries[0]["what_to_do"]
    assert lines_of(logs, "projector applied the batch after an outage")[0]["attempts"] > 2
    await served_again(system, job_id)


async def test_the_projector_waits_out_postgres_stopping_just_after_its_upgrade_check(
    system: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres stopped within the projector's start, after it answered (its read models made
    current) and before the checkpoint is read: the projector waits, says so once, and starts
    once Postgres is back; a job posted meanwhile is served. (Before: the checkpoint's read was
    not retried, and the projector died with the connection refused.)"""
    monkeypatch.setattr(outage, "RETRY_PAUSE_MAX", 0.2)  # many tries during the outage
    made_current = upgrade.ensure_current_in_place

    async def then_postgres_stops(*args: Any, **kwargs: Any) -> Any:
        result = await made_current(*args, **kwargs)
        await asyncio.to_thread(own_postgres.stop)
        return result

    monkeypatch.setattr(upgrade, "ensure_current_in_place", then_postgres_stops)
    await system.start_runner()
    with capture_logs() as logs:
        await system.start_projector()
        await until_logged(logs, outage.WAITING_EVENT)
        await asyncio.sleep(2)  # tried again and again meanwhile
        assert not system._tasks["projector"].done(), system._tasks["projector"]
        await start_postgres(own_postgres)
        await until_logged(logs, "projector started")
    waiting = lines_of(logs, outage.WAITING_EVENT)
    assert len(waiting) == 1, waiting
    assert waiting[0]["reading"] == "the checkpoint", waiting
    assert len(lines_of(logs, outage.BACK_EVENT)) == 1
    await system.start_api()
    job_id = await post_job(system)
    await served_again(system, job_id)


async def test_a_job_posted_while_postgres_is_frozen_waits_for_no_look_of_its_own(
    down_settings: Settings, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen, with the version not known: a POST (``wait=stored``) that arrives while the
    watch's look is under way takes that look's answer and makes no look of its own, so it
    waits one look's bound at most, not two. (Before: it waited for the watch's look, then
    looked itself.)"""
    settings = msgspec.structs.replace(down_settings, health_postgres_timeout_seconds=3.0)
    running = System(settings)
    try:
        with frozen_postgres(own_postgres):
            await running.start_api()
            gate = gate_of(running)
            looks: list[bool] = []  # one per look, whether the watch made it
            acquire = gate._pool.acquire

            def counted(deadline_seconds: float | None = None) -> Any:
                if deadline_seconds == settings.health_postgres_timeout_seconds:
                    looks.append(asyncio.current_task() is gate._task)
                return acquire(deadline_seconds)

            monkeypatch.setattr(gate._pool, "acquire", counted)
            async with asyncio.timeout(30):
                while not gate._lock.locked():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # the watch's next look, under its lock
            await post_job(running)
        assert not gate.known
        assert all(looks), looks  # the watch's looks only (if any began): the POST made none
    finally:
        await running.stop()
