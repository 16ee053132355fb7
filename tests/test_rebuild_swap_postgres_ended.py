"""The rebuild of older read models (a projector's, or `jobrunner replay`'s on them) with
Postgres ending its connections at the swap, for real: its backends terminated
(``pg_terminate_backend``), Postgres restarted, or stopped. Before the COMMIT is sent nothing is
swapped and the sentence says so; once the COMMIT was answered the rebuild has succeeded,
whatever meets the drop of the replaced read models after it. And its write cancelled by an
operator (``pg_cancel_backend``) as it loads: one sentence, nothing swapped."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import msgspec
import pytest

from jobrunner import cli
from jobrunner.common import postgresconnect, readmodelversion
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.readmodelversion import UPGRADE_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import upgrade
from jobrunner.services.projector.replay import PREVIOUS_SCHEMA
from jobrunner.services.projector.replaylock import ReplayLockLost
from tests.tools.rebuild_backends import WaitingWriteCancelled
from tests.tools.replay_in_process import replay_in_process
from tests.tools.swap_faults import (
    ENDINGS,
    LOCK_HOLDER_TERMINATED,
    SwapFault,
    assert_refused_then_replays,
    connections_ended,
    fault_at_swap,
    killed_during_the_commit,
    replay_succeeding_past_connections_ended,
    server_now,
)
from tests.upgrade_support import History, complete, older_state, read_models

pytestmark = pytest.mark.timeout(300)

# The probe's bound (replay_postgres_answer_seconds), short for the test.
BOUND = 4.0

# The advisory lock under which a projector creates the read models on an empty database.
SCHEMA_CREATION_LOCK = "jobrunner-schema"


@pytest.fixture
async def private(settings: Settings, own_postgres: EmbeddedPostgres) -> Settings:
    return msgspec.structs.replace(
        settings, database_url=own_postgres.url, replay_postgres_answer_seconds=BOUND
    )


async def _rebuild_unavailable_at_swap(
    private: Settings, monkeypatch: pytest.MonkeyPatch, fault: SwapFault
) -> str:
    """A projector's rebuild with ``fault`` once its swap's statements are done, before its
    COMMIT is sent: it fails POSTGRES_UNAVAILABLE; what it said."""
    came = fault_at_swap(monkeypatch, upgrade, after_commit=False, fault=fault)
    with pytest.raises(postgresconnect.PostgresUnusable) as failed:
        await upgrade.ensure_current(private, allow_rebuild=True)
    said = str(failed.value)
    assert came, said
    assert failed.value.code == "POSTGRES_UNAVAILABLE", said
    return said


async def _next_attempt_swaps_in_complete_read_models(
    private: Settings, monkeypatch: pytest.MonkeyPatch, made: History
) -> None:
    """With the fault undone, the next rebuild swaps in complete read models alone."""
    monkeypatch.undo()
    assert (await upgrade.ensure_current(private, allow_rebuild=True)).rebuilt
    found = await read_models(private)
    assert complete(found, made) == []
    assert found["schemas"] == {READ_SCHEMA}


@pytest.mark.parametrize("kind", ["backends-terminated", "restarted"])
async def test_a_rebuild_whose_postgres_ends_its_swap_before_the_commit_swaps_nothing(
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """The rebuild's backends terminated, or Postgres restarted, once the swap's statements are
    done and before its COMMIT is sent: POSTGRES_UNAVAILABLE, "nothing was swapped" and that
    the next attempt resumes it; the older read models still live, the rebuilt ones kept
    beside them; the next attempt swaps in complete read models."""
    made = await older_state(private, jobs=5, lines=20)
    fault = await connections_ended(kind, private.database_url, own_postgres)
    said = await _rebuild_unavailable_at_swap(private, monkeypatch, fault)
    assert "went away during the read-model rebuild" in said, said
    assert "nothing was swapped; the next attempt" in said, said
    found = await read_models(private)
    assert found["version"] == readmodelversion.UNVERSIONED
    assert found["schemas"] == {READ_SCHEMA, UPGRADE_SCHEMA}
    await _next_attempt_swaps_in_complete_read_models(private, monkeypatch, made)


async def test_a_rebuild_whose_lock_holder_alone_is_terminated_before_the_commit_swaps_nothing(
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the rebuild's swap session (the replay lock's holder) terminated before its COMMIT
    is sent, Postgres answering: REPLAY_LOCK_LOST, nothing swapped, the older read models still
    live; the next attempt swaps in complete read models."""
    made = await older_state(private, jobs=5, lines=20)
    fault = await connections_ended(LOCK_HOLDER_TERMINATED, private.database_url, own_postgres)
    came = fault_at_swap(monkeypatch, upgrade, after_commit=False, fault=fault)
    with pytest.raises(ReplayLockLost) as failed:
        await upgrade.ensure_current(private, allow_rebuild=True)
    assert came, str(failed.value)
    assert "nothing was swapped" in str(failed.value)
    assert (await read_models(private))["version"] == readmodelversion.UNVERSIONED
    await _next_attempt_swaps_in_complete_read_models(private, monkeypatch, made)


async def test_a_rebuild_whose_postgres_crashes_while_its_commit_waits_says_it_may_have_swapped(
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Postgres killed outright and started again while the rebuild's swap COMMIT waits for its
    answer (sent to a frozen server): POSTGRES_UNAVAILABLE, the read models "may or may not
    have been swapped in" and the next attempt resumes or finds them current; that attempt
    swaps in complete read models (the COMMIT never ran)."""
    made = await older_state(private, jobs=5, lines=20)
    async with killed_during_the_commit(own_postgres) as fault:
        said = await _rebuild_unavailable_at_swap(private, monkeypatch, fault)
    assert "may or may not have been swapped in; the next attempt" in said, said
    assert "finds the read models current" in said, said
    assert (await read_models(private))["version"] == readmodelversion.UNVERSIONED
    await _next_attempt_swaps_in_complete_read_models(private, monkeypatch, made)


@pytest.mark.parametrize("kind", ENDINGS)
async def test_a_replay_whose_rebuild_meets_postgres_ended_after_the_swap_committed_succeeds(
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    """`jobrunner replay` on older read models, their rebuild's backends terminated, or
    Postgres restarted or stopped, once the swap's COMMIT was answered: the rebuild succeeded,
    exit 0 and its report, the read models complete; readmodel_previous, if its drop failed
    (Postgres stopped), left with a warning saying so, as a replay's. (Stopped, it exited 69,
    POSTGRES_UNAVAILABLE, though the rebuilt read models were live.)"""
    made = await older_state(private, jobs=5, lines=20)
    err = await replay_succeeding_past_connections_ended(
        kind, upgrade, private, own_postgres, monkeypatch, capsys
    )
    found = await read_models(private)
    assert complete(found, made) == []
    previous_left = PREVIOUS_SCHEMA in found["schemas"]
    assert previous_left == (
        f"{PREVIOUS_SCHEMA} left; the next replay or rebuild drops it" in err
    ), err
    if kind == "stopped":
        assert previous_left, err


async def test_a_replay_whose_rebuild_write_is_cancelled_mid_load_says_so_in_one_sentence(
    private: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`jobrunner replay` on older read models, an operator cancelling the rebuild's write
    (pg_cancel_backend) while it waits in the loading: STATEMENT_CANCELLED, one sentence, exit
    5; the older read models still live; run again, it completes the rebuild."""
    made = await older_state(private, jobs=5, lines=20)
    fault = WaitingWriteCancelled(
        private.database_url, await server_now(private.database_url), f"{UPGRADE_SCHEMA}.checkpoint"
    )
    resume_or_start = upgrade._resume_or_start

    async def loading_after_the_fault(*args: Any) -> bool:
        resumed = await resume_or_start(*args)
        await fault()
        return resumed

    monkeypatch.setattr(upgrade, "_resume_or_start", loading_after_the_fault)
    code, err = await replay_in_process(private, monkeypatch, capsys)
    assert fault.done(), "no write of the loading waited: " + err

    async def older_read_models_live() -> None:
        assert (await read_models(private))["version"] == readmodelversion.UNVERSIONED

    await assert_refused_then_replays(
        (code, err),
        postgresconnect.STATEMENT_CANCELLED_EXIT,
        [
            "jobrunner replay: STATEMENT_CANCELLED:",
            "of the read-model rebuild",
            "nothing was swapped; the next attempt",
        ],
        older_read_models_live,
        private,
        monkeypatch,
        capsys,
    )
    assert complete(await read_models(private), made) == []


async def test_a_replay_whose_version_check_is_cancelled_on_an_empty_database_says_so(
    private: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`jobrunner replay` on an empty database, an operator cancelling its wait for the lock
    of the read models' creation (another projector creating them holds it): STATEMENT_CANCELLED,
    one sentence that nothing was changed, exit 5; run again once the lock is let go, it
    completes."""
    holder = await asyncpg.connect(private.database_url)
    try:
        await holder.execute(f"SELECT pg_advisory_lock(hashtext('{SCHEMA_CREATION_LOCK}'))")
        replaying = asyncio.ensure_future(replay_in_process(private, monkeypatch, capsys))
        async with asyncio.timeout(60):
            while not (  # noqa: ASYNC110 - Postgres state
                waiting := await holder.fetchval(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
            ):
                await asyncio.sleep(0.02)
        assert await holder.fetchval("SELECT pg_cancel_backend($1)", waiting)
        outcome = await replaying
    finally:
        await holder.close()

    async def nothing_created() -> None:
        conn = await asyncpg.connect(private.database_url)
        try:
            assert not await conn.fetchval("SELECT to_regclass('readmodel.checkpoint') IS NOT NULL")
        finally:
            await conn.close()

    await assert_refused_then_replays(
        outcome,
        postgresconnect.STATEMENT_CANCELLED_EXIT,
        [
            "jobrunner replay: STATEMENT_CANCELLED:",
            "nothing was changed; run `jobrunner replay` again",
        ],
        nothing_created,
        private,
        monkeypatch,
        capsys,
    )
    assert (await read_models(private))["version"] == readmodelversion.READMODEL_VERSION


async def test_a_replay_that_meets_a_postgres_error_of_no_known_kind_says_it_in_one_sentence(
    private: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`jobrunner replay` on a database whose `readmodel.jobs` is a table of something else (the
    read models' creation fails in Postgres, with an error no other handler names):
    POSTGRES_ERROR with Postgres' SQLSTATE, one sentence, no traceback."""
    conn = await asyncpg.connect(private.database_url)
    try:
        await conn.execute("CREATE SCHEMA readmodel; CREATE TABLE readmodel.jobs (x integer)")
    finally:
        await conn.close()
    code, err = await replay_in_process(private, monkeypatch, capsys)
    assert "Traceback" not in err, err
    assert code == cli.POSTGRES_ERROR_EXIT, err
    assert "jobrunner replay: POSTGRES_ERROR: Postgres ended its work with " in err, err
    assert "SQLSTATE " in err, err
