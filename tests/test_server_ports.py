"""Embedded servers on a port another process took between the choice and the bind: a port
chosen by free_port() is replaced, a port that was given is not."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import nats
import pytest

from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import ServerStartError, bind_free_port
from tests.servers import TEST_POSTGRES_SETTINGS
from tests.tls_nats import ConfiguredNats


@contextmanager
def taken(port: int) -> Iterator[None]:
    """``port`` listened on by someone else (another test worker, say) meanwhile."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        yield


async def test_nats_whose_chosen_port_was_taken_starts_on_another(tmp_path: Path) -> None:
    """nats-server whose free port was taken before it started comes up on another and answers."""
    server = EmbeddedNats(tmp_path / "nats")
    chosen = server.port
    with taken(chosen):
        server.start()
    try:
        assert server.port != chosen
        nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=0)
        await nc.close()
    finally:
        server.stop()


async def test_configured_nats_whose_port_was_taken_starts_on_another(tmp_path: Path) -> None:
    """A test's nats-server with a configuration file of its own moves off a taken port too
    (the command line's port wins over the file's)."""
    server = ConfiguredNats(tmp_path, "")
    chosen = server.port
    with taken(chosen):
        server.start()
    try:
        assert server.port != chosen
        nc = await nats.connect(
            f"nats://127.0.0.1:{server.port}", connect_timeout=5, max_reconnect_attempts=0
        )
        await nc.close()
    finally:
        server.stop()


def test_nats_on_a_given_port_that_is_taken_fails_to_start(tmp_path: Path) -> None:
    """A port the caller named (a restart, a user's setting) is never silently replaced."""
    with bind_free_port() as chosen:
        port = int(chosen.getsockname()[1])
    server = EmbeddedNats(tmp_path / "nats", port=port)
    with taken(port), pytest.raises(ServerStartError, match="address already in use"):
        server.start(timeout=30)
    assert server.port == port


async def test_postgres_whose_chosen_port_was_taken_starts_on_another() -> None:
    """Postgres whose free port was taken before it started comes up on another and answers."""
    with scratch_dir("jobrunner-test-port-") as root:
        server = EmbeddedPostgres(root / "data", settings=TEST_POSTGRES_SETTINGS)
        chosen = server.port
        with taken(chosen):
            await asyncio.to_thread(server.start)
        try:
            assert server.port != chosen
            conn = await asyncpg.connect(server.url, timeout=10)
            assert await conn.fetchval("select 1") == 1
            await conn.close()
        finally:
            server.stop()


def test_a_bound_free_port_is_held_until_released() -> None:
    """The socket handed out holds its port: nobody else can bind it until it is closed."""
    with bind_free_port() as held:
        port = int(held.getsockname()[1])
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", port))
