"""`jobrunner replay` against a Postgres that does not answer (stopped, or frozen: the kernel
accepts the connection, nothing answers it) or that refuses its database_url says so in one
sentence with a code, and exits non-zero within its connect bound: no traceback. It printed
asyncpg's traceback (ConnectionRefusedError, InvalidPasswordError), and on a frozen Postgres
only after asyncpg's own 60 s."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jobrunner import cli
from jobrunner.common import postgresconnect
from jobrunner.common.refusal import REFUSED_EXIT
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests.cli_support import cli_env, start_cli
from tests.tools.logging_state import logging_put_back
from tests.tools.postgres_processes import freeze_postgres, thaw

pytestmark = pytest.mark.timeout(300)

UNAVAILABLE = "POSTGRES_UNAVAILABLE"
START_IT = "start Postgres or check database_url"
# How long the test waits for the command at most: well past its bound, to see one that overruns.
PATIENCE = 120.0


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
        (postgresconnect.CHECK_CONNECT_SECONDS - 2, True),
        (postgresconnect.CHECK_CONNECT_SECONDS + 20, False),
    ],
    ids=["thawed-within-the-bound", "thawed-past-it"],
)
async def test_replay_with_postgres_frozen_gives_up_at_its_connect_bound(
    settings: Settings, own_postgres: EmbeddedPostgres, frozen_for: float, answered: bool
) -> None:
    """Postgres thawed 8 s into the connect's 10 s bound: the replay runs (exit 0). Frozen
    20 s past it: the command has said POSTGRES_UNAVAILABLE and exited 69 before the thaw."""
    private = msgspec.structs.replace(settings, database_url=own_postgres.url)
    thawed: list[bool] = []
    pids = freeze_postgres(own_postgres)

    def thaw_now() -> None:
        thawed.append(True)
        thaw(pids)

    thawing = asyncio.get_running_loop().call_later(frozen_for, thaw_now)
    try:
        code, out = await _replay(private)
        ended_frozen = not thawed
    finally:
        thawing.cancel()
        thaw(pids)
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
    assert code == REFUSED_EXIT, out
    assert "Traceback" not in out, out
    assert "POSTGRES_REFUSED" in out, out
    assert postgresconnect.WHAT_TO_DO_ON_REFUSAL in out, out
    assert "not-the-password" not in out, out


async def test_replay_with_postgres_frozen_after_its_check_says_so_and_exits(
    settings: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Postgres answers the command's check at its start, then freezes: the rebuild's first
    connect gives up at its bound and the command says POSTGRES_UNAVAILABLE, exit 69. It waited
    asyncpg's 60 s, then main() re-raised the TimeoutError: a traceback, exit 1. (In-process, so
    that the freeze comes right after the check: ``check_answers`` freezes Postgres as it
    returns.)"""
    private = msgspec.structs.replace(settings, database_url=own_postgres.url)
    for name, value in cli_env(private).items():
        monkeypatch.setenv(name, value)
    checked = postgresconnect.check_answers
    pids: list[int] = []

    async def frozen_once_answered(database_url: str, within: float = 10.0) -> None:
        await checked(database_url, within)
        pids.extend(freeze_postgres(own_postgres))

    monkeypatch.setattr(postgresconnect, "check_answers", frozen_once_answered)
    try:
        with logging_put_back():
            code = await asyncio.wait_for(asyncio.to_thread(cli.main, ["replay"]), PATIENCE)
    finally:
        thaw(pids)
    err = capsys.readouterr().err
    assert pids, "the check did not answer: " + err
    assert code == postgresconnect.UNAVAILABLE_EXIT, err
    assert "Traceback" not in err, err
    assert UNAVAILABLE in err, err
    assert START_IT in err, err
