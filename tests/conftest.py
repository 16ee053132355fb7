from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jobrunner.common.settings import Settings
from tests.servers import PostgresCluster, delete_streams, nats_url, postgres_cluster
from tests.system import System

TOOLS = Path(__file__).parent / "tools"
# The headless Chromium fixtures (``browser``, ``page``) of the web UI tests.
pytest_plugins = ["tests.browser"]


@pytest.fixture(scope="session")
def nats_server_url() -> Iterator[str]:
    with nats_url() as url:
        yield url


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
async def settings(
    nats_server_url: str, pg_cluster: PostgresCluster, tmp_path: Path
) -> AsyncIterator[Settings]:
    """Settings isolated for one test: its own subject prefix and database, removed after."""
    isolated = Settings(
        nats_url=nats_server_url,
        database_url=await pg_cluster.fresh_database(),
        prefix=f"t{uuid.uuid4().hex[:10]}",
        state_dir=str(tmp_path / "state"),
        demo_pace=0.0,
        lease_ttl_seconds=3.0,
        log_format="console",
    )
    yield isolated
    await pg_cluster.drop_database(isolated.database_url)
    await delete_streams(nats_server_url, isolated.prefix)


@pytest.fixture
async def system(settings: Settings) -> AsyncIterator[System]:
    running = System(settings)
    await running.start()
    yield running
    await running.stop()
