"""A database_url Postgres refuses (no such database, a wrong password) is not an outage to wait
out: the API's start and the projector's end with the error, as a misconfiguration should; met
later by a running API (its database dropped), reads answer 503 POSTGRES_REFUSED with what to
check, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common.settings import Settings
from jobrunner.services.api.app import create_app
from tests.servers import PostgresCluster
from tests.system import System
from tests.tools.health_reports import codes, health

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def missing_database(settings: Settings) -> Settings:
    """The test's settings with a database_url naming a database that does not exist."""
    base, _, _ = settings.database_url.rpartition("/")
    return msgspec.structs.replace(settings, database_url=f"{base}/jobrunner_no_such_database")


@pytest.fixture
async def system(missing_database: Settings) -> AsyncIterator[System]:
    """Nothing started yet: each test starts the services it means to, and when."""
    async with System(missing_database) as running:
        yield running


async def test_the_api_does_not_start_on_a_database_that_does_not_exist(
    missing_database: Settings,
) -> None:
    """The API's start (its lifespan) ends with Postgres's refusal. (Before: it started, logged
    "read models not reached at start (Postgres away ...)", and every read answered 500.)"""
    app = create_app(missing_database)
    # Litestar's lifespan runs in a task group: the refusal comes wrapped in an ExceptionGroup.
    with pytest.raises(BaseExceptionGroup) as raised:
        async with app.lifespan():
            pass
    assert raised.group_contains(asyncpg.InvalidCatalogNameError), raised.value


async def test_the_projector_does_not_start_on_a_database_that_does_not_exist(
    system: System,
) -> None:
    """The projector's start ends with Postgres's refusal rather than waiting for an outage
    that is not one."""
    with capture_logs() as logs:
        await system.start_projector()
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await system.exited("projector")
    assert not [line for line in logs if line["event"] == "projector waits for Postgres"], logs


async def test_a_read_after_the_database_is_dropped_says_postgres_refuses(
    settings: Settings, pg_cluster: PostgresCluster
) -> None:
    """The API's database dropped under it: reads answer 503 POSTGRES_REFUSED with a sentence
    saying to check database_url, one log line for many. (Before: 500 INTERNAL_ERROR with a
    traceback per read.)"""
    running = System(settings)
    try:
        await running.start_projector()
        await running.start_api()
        await pg_cluster.drop_database(settings.database_url)
        with capture_logs() as logs:
            async with running.client() as client:
                answers = [await client.get("/api/jobs") for _ in range(3)]
        for response in answers:
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "POSTGRES_REFUSED", error
            assert "database_url" in error["message"], error
        refused = [
            line for line in logs if line["event"] == "Postgres refuses the API's database_url"
        ]
        assert len(refused) <= 1, refused
        report = await health(running)
        assert report["http_status"] == 503, report
        assert "POSTGRES_REFUSED" in codes(report), report
        assert not [line for line in logs if line["event"] == "unhandled error"], logs
    finally:
        await running.stop()
