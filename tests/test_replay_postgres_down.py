"""`jobrunner replay` against a Postgres that does not answer (stopped, or frozen: the kernel
accepts the connection, nothing answers it) or that refuses its database_url says so in one
sentence with a code, and exits non-zero within its connect bound: no traceback. It printed
asyncpg's traceback (ConnectionRefusedError, InvalidPasswordError), and on a frozen Postgres
only after asyncpg's own 60 s."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import msgspec
import pytest

from jobrunner.common import postgresconnect
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests import servers
from tests.cli_support import cli_env, start_cli
from tests.freeze import freeze
from tests.tools.postgres_processes import postgres_pids

pytestmark = pytest.mark.timeout(300)

UNAVAILABLE = "POSTGRES_UNAVAILABLE"
START_IT = "start Postgres or check database_url"
# How long the test waits for the command at most: well past its bound, to see one that overruns.
PATIENCE = 120.0


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres of this test's own: it is stopped or frozen."""
    async with servers.own_postgres("jobrunner-test-replay-postgres-down-") as server:
        yield server


async def _replay(settings: Settings) -> tuple[int | None, str]:
    """``jobrunner replay``'s exit code (None: still running after PATIENCE) and output."""
    proc = await start_cli("replay", env=cli_env(settings), output=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PATIENCE)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return None, out.decode()
    return proc.returncode, out.decode()


async def test_replay_with_postgres_stopped_says_so_and_exits(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    """Postgres stopped: one sentence, POSTGRES_UNAVAILABLE and what to do, exit 69."""
    private = msgspec.structs.replace(settings, database_url=own_postgres.url)
    await asyncio.to_thread(own_postgres.stop)
    code, out = await _replay(private)
    assert code == postgresconnect.UNAVAILABLE_EXIT, out
    assert "Traceback" not in out, out
    assert UNAVAILABLE in out, out
    assert START_IT in out, out
    assert f"127.0.0.1:{own_postgres.port}" in out, out
    assert own_postgres.password not in out, out


@pytest.mark.parametrize(
    ("frozen_for", "answered"),
    [
        (postgresconnect.CHECK_CONNECT_SECONDS - 5, True),
        (postgresconnect.CHECK_CONNECT_SECONDS + 20, False),
    ],
    ids=["thawed-within-the-bound", "thawed-past-it"],
)
async def test_replay_with_postgres_frozen_gives_up_at_its_connect_bound(
    settings: Settings, own_postgres: EmbeddedPostgres, frozen_for: float, answered: bool
) -> None:
    """Postgres thawed 5 s into the connect's 10 s bound: the replay runs (exit 0). Frozen
    20 s past it: the command has said POSTGRES_UNAVAILABLE and exited 69 before the thaw."""
    private = msgspec.structs.replace(settings, database_url=own_postgres.url)
    pids = postgres_pids(own_postgres)
    thawed: list[bool] = []

    def thaw() -> None:
        thawed.append(True)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    for pid in pids:
        freeze(pid)
    thawing = asyncio.get_running_loop().call_later(frozen_for, thaw)
    try:
        code, out = await _replay(private)
        ended_frozen = not thawed
    finally:
        thawing.cancel()
        thaw()
    assert "Traceback" not in out, out
    if answered:
        assert code == 0, out
        return
    assert ended_frozen, "the command waited for the thaw:\n" + out
    assert code == postgresconnect.UNAVAILABLE_EXIT, out
    assert UNAVAILABLE in out, out
    assert START_IT in out, out


async def test_replay_with_a_refused_database_url_says_so_and_exits(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    """A wrong password: one sentence, POSTGRES_REFUSED and what to check, exit 78."""
    wrong = own_postgres.url.replace(own_postgres.password, "not-the-password")
    private = msgspec.structs.replace(settings, database_url=wrong)
    code, out = await _replay(private)
    assert code == postgresconnect.REFUSED_EXIT, out
    assert "Traceback" not in out, out
    assert "POSTGRES_REFUSED" in out, out
    assert postgresconnect.WHAT_TO_DO_ON_REFUSAL in out, out
    assert "not-the-password" not in out, out
