"""Postgres's disk full under a running projector (a real filesystem that fills: a small tmpfs
holding the table of log lines): the projector says the disk is full and where, not "start
Postgres or check database_url", and applies the waiting events once space is freed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import outage
from tests.system import System
from tests.tools.captured_logs import lines_of, until_logged
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.small_disk import fill, mounted_tmpfs

pytestmark = pytest.mark.timeout(180)

DISK_BYTES = 4 * 1024 * 1024
RETRYING = "projector cannot apply a batch; retrying it"


@pytest.fixture
def small_disk(own_postgres: EmbeddedPostgres) -> Iterator[Path]:
    """A 4 MiB tmpfs beside Postgres's data directory (a place its user can reach, removed with
    it), owned by Postgres's user."""
    mount_point = own_postgres.data_dir.parent / "small-disk"
    mount_point.mkdir()
    with mounted_tmpfs(mount_point, DISK_BYTES):
        if own_postgres.user is not None:  # root's tests run Postgres as its own user
            owner = pwd.getpwnam(own_postgres.user)
            os.chown(mount_point, owner.pw_uid, owner.pw_gid)
        yield mount_point


@pytest.fixture
async def system(settings: Settings, own_postgres: EmbeddedPostgres) -> AsyncIterator[System]:
    private = msgspec.structs.replace(
        settings, database_url=own_postgres.url, job_types_file=TEST_TYPES
    )
    async with System(private) as running:
        yield running


async def test_a_full_disk_is_told_as_such_and_the_projector_goes_on_once_freed(
    system: System, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector's retries say Postgres's disk is full (the tablespace's directory to free
    space in, and the file), and once space is freed it applies every line stored meanwhile."""
    monkeypatch.setattr(outage, "RETRY_PAUSE_MAX", 0.2)
    with capture_logs() as started:
        await system.start_projector()
        await until_logged(started, "projector started")
    await system.start_api()
    await system.start_runner()
    conn = await asyncpg.connect(system.settings.database_url)
    try:
        await conn.execute(f"CREATE TABLESPACE small_disk LOCATION '{small_disk}'")
        await conn.execute(f"ALTER TABLE {READ_SCHEMA}.log_lines SET TABLESPACE small_disk")
    finally:
        await conn.close()
    filler = fill(small_disk, leave=64 * 1024)
    with capture_logs() as logs:
        async with system.client() as client:
            response = await client.post(
                "/api/jobs?wait=stored", json={"job_type": "emit", "parameters": {"lines": 20000}}
            )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        await until_logged(logs, RETRYING)
        retrying = lines_of(logs, RETRYING)[0]
        assert "DiskFullError" in retrying["error"], retrying
        assert "disk is full" in retrying["what_to_do"], retrying
        # Where: the tablespace's directory, as Postgres tells it, and the file it names.
        assert f"free space on the filesystem of {small_disk} " in retrying["what_to_do"]
        assert "pg_tblspc/" in retrying["what_to_do"], retrying
        assert "database_url" not in retrying["what_to_do"], retrying
        filler.unlink()
        await until_logged(logs, "projector applied the batch after an outage")
    async with system.client() as client, asyncio.timeout(60):
        while True:
            job = (await client.get(f"/api/jobs/{job_id}")).json()
            if job.get("status") == "completed" and job.get("log_count") == 20000:
                break
            await asyncio.sleep(0.2)  # the projector catches up: poll its read model
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(system.settings.database_url)
        await conn.execute(f"ALTER TABLE {READ_SCHEMA}.log_lines SET TABLESPACE pg_default")
        await conn.execute("DROP TABLESPACE small_disk")
        await conn.close()
