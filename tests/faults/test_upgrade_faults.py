"""A projector SIGKILLed in the middle of rebuilding older read models: the live schema is never
half-swapped, and the next start resumes the rebuild and swaps in complete tables. A rebuild
whose replay lock session ends, or whose Postgres restarts, is started again in place."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import asyncpg
import msgspec

from jobrunner.common import readmodelversion
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import store
from tests.cli_support import cli_env
from tests.history_support import job_events, publish, wait_projected
from tests.replaylock_support import terminate_lock_holder
from tests.upgrade_support import complete, older_state, read_models, wait_version

CRASHING_REBUILD = Path(__file__).parent / "tools" / "crashing_rebuild.py"


async def start_projector(settings: Settings, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobrunner.cli",
            "projector",
            env={**os.environ, **cli_env(settings), "JOBRUNNER_LOG_FORMAT": "json"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


async def wait_for_swap_waiting(conn: asyncpg.Connection, timeout: float = 60.0) -> None:
    """Until a session waits for the swap lock exclusively (the rebuild, ready to swap)."""
    async with asyncio.timeout(timeout):
        while True:
            if await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND mode = 'ExclusiveLock' AND objid = $1",
                store.SWAP_LOCK & 0xFFFFFFFF,
            ):
                return
            await asyncio.sleep(0.05)


async def test_a_projector_killed_during_the_swap_leaves_the_old_tables_and_resumes(
    settings: Settings, tmp_path: Path
) -> None:
    """Killed while it waits to swap the rebuilt tables in (a batch of an older projector holds
    the swap lock), the projector leaves the old tables live and whole; started again it resumes
    the rebuild from its own checkpoint and swaps in complete tables."""
    made = await older_state(settings, jobs=20, lines=50)
    log = tmp_path / "projector.log"
    holder = await asyncpg.connect(settings.database_url)
    try:
        # An older projector in the middle of a batch: it holds the swap lock shared.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT pg_advisory_xact_lock_shared($1)", store.SWAP_LOCK)
        projector = await start_projector(settings, log)
        await wait_for_swap_waiting(holder)
        projector.send_signal(signal.SIGKILL)
        await projector.wait()
        await transaction.rollback()
        after_kill = await read_models(settings)
    finally:
        await holder.close()
    projector = await start_projector(settings, log)
    try:
        await wait_version(settings, readmodelversion.READMODEL_VERSION)
        done = await read_models(settings)
    finally:
        projector.send_signal(signal.SIGTERM)
        await asyncio.wait_for(projector.wait(), 30)
    # Never half-swapped: the old tables stayed live, untouched, beside the rebuilt ones.
    assert after_kill["version"] == readmodelversion.UNVERSIONED
    assert set(after_kill["jobs"].values()) == {("pending", 0)}
    assert after_kill["schemas"] == {"readmodel", readmodelversion.UPGRADE_SCHEMA}
    assert complete(done, made) == []
    assert done["schemas"] == {"readmodel"}
    assert b"resuming a read-model rebuild" in log.read_bytes()


async def test_a_projector_killed_in_the_middle_of_loading_resumes_from_its_checkpoint(
    settings: Settings, tmp_path: Path
) -> None:
    """Killed after it applied part of the stream to the rebuilt tables, the projector's next
    start resumes after what they hold, and the swapped-in tables hold every job, line and batch
    exactly once."""
    # More events than one batch of the feed (10,000): the crash comes between two batches.
    made = await older_state(settings, jobs=800, lines=10, per_event=1)
    crash = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CRASHING_REBUILD),
        env={**os.environ, **cli_env(settings)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(crash.communicate(), 120)
    assert crash.returncode == -signal.SIGKILL, err.decode()
    conn = await asyncpg.connect(settings.database_url)
    try:
        partial = await store.checkpoint(conn, readmodelversion.UPGRADE_SCHEMA)
    finally:
        await conn.close()
    after_kill = await read_models(settings)
    log = tmp_path / "projector.log"
    projector = await start_projector(settings, log)
    try:
        await wait_version(settings, readmodelversion.READMODEL_VERSION)
        done = await read_models(settings)
    finally:
        projector.send_signal(signal.SIGTERM)
        await asyncio.wait_for(projector.wait(), 30)
    assert 0 < partial < made.last_seq
    assert after_kill["version"] == readmodelversion.UNVERSIONED
    assert set(after_kill["jobs"].values()) == {("pending", 0)}
    assert complete(done, made) == []
    assert re.search(rf'"after_seq": ?{partial}\b', log.read_text())


async def wait_logged(
    projector: asyncio.subprocess.Process, log: Path, text: bytes, timeout: float = 60.0
) -> None:
    """Until the projector's log says ``text``; fails at once should the projector exit."""
    async with asyncio.timeout(timeout):
        while text not in log.read_bytes():
            assert projector.returncode is None, f"the projector exited:\n{log.read_text()}"
            await asyncio.sleep(0.05)


async def test_a_rebuild_whose_lock_session_ends_is_started_again_in_place(
    settings: Settings, tmp_path: Path
) -> None:
    """The Postgres session holding the rebuild's replay lock ends (``pg_terminate_backend``, as
    an idle timeout or a restart) while the rebuild waits to swap: nothing is swapped, and the
    same projector process rebuilds again, swaps in complete tables and projects what comes
    after. It used to exit (REPLAY_LOCK_LOST) and wait for a supervisor to start it again."""
    made = await older_state(settings, jobs=20, lines=50)
    log = tmp_path / "projector.log"
    holder = await asyncpg.connect(settings.database_url)
    projector = None
    try:
        # An older projector in the middle of a batch holds the swap lock shared: the rebuild
        # waits to swap, its lock session idle.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT pg_advisory_xact_lock_shared($1)", store.SWAP_LOCK)
        projector = await start_projector(settings, log)
        await wait_for_swap_waiting(holder)
        await terminate_lock_holder(settings)
        await wait_logged(projector, log, b"rebuilding again")
        after_loss = await read_models(settings)
        await transaction.rollback()
        await wait_version(settings, readmodelversion.READMODEL_VERSION)
        done = await read_models(settings)
        after = await publish(settings, job_events("after-the-rebuild"))
        await wait_projected(settings, after, timeout=60)
        assert projector.returncode is None, "the projector exited"
    finally:
        await holder.close()
        if projector is not None and projector.returncode is None:
            projector.send_signal(signal.SIGTERM)
            await asyncio.wait_for(projector.wait(), 30)
    assert after_loss["version"] == readmodelversion.UNVERSIONED  # nothing swapped
    assert complete(done, made) == []
    assert done["schemas"] == {"readmodel"}
    assert log.read_bytes().count(b"projector started") == 1


async def wait_loading(projector: asyncio.subprocess.Process, log: Path) -> None:
    """Until the rebuild reports its loading phase (the stream into the rebuilt tables)."""
    await wait_logged(projector, log, b'"phase": "loading"')


async def test_a_rebuild_whose_postgres_restarts_while_loading_is_started_again_in_place(
    settings: Settings, own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Postgres restarts while the rebuild loads the stream: the same projector process waits
    it out, rebuilds again from the rebuilt tables' checkpoint, swaps in complete tables and
    projects what comes after. It used to exit (ConnectionRefusedError) at the first batch
    that found Postgres gone."""
    settings = msgspec.structs.replace(settings, database_url=own_postgres.url)
    made = await older_state(settings, jobs=100, lines=2000)
    log = tmp_path / "projector.log"
    projector = await start_projector(settings, log)
    try:
        await wait_loading(projector, log)
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.to_thread(own_postgres.start)
        await wait_version(settings, readmodelversion.READMODEL_VERSION, timeout=120)
        done = await read_models(settings)
        after = await publish(settings, job_events("after-the-rebuild"))
        await wait_projected(settings, after, timeout=60)
        assert projector.returncode is None, "the projector exited"
    finally:
        if projector.returncode is None:
            projector.send_signal(signal.SIGTERM)
            await asyncio.wait_for(projector.wait(), 30)
    text = log.read_text()
    assert "REBUILD_INTERRUPTED" in text  # the restart met the rebuild, not the projector after
    assert complete(done, made) == []
    assert done["schemas"] == {"readmodel"}
    assert text.count("projector started") == 1


async def test_sigterm_while_a_rebuild_waits_out_an_outage_ends_the_projector(
    settings: Settings, own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Postgres gone while the rebuild loads, the projector retrying it: SIGTERM ends it (exit
    0) instead of the retries going on. It used to go on retrying until SIGKILL."""
    settings = msgspec.structs.replace(settings, database_url=own_postgres.url)
    await older_state(settings, jobs=100, lines=2000)
    log = tmp_path / "projector.log"
    projector = await start_projector(settings, log)
    try:
        await wait_loading(projector, log)
        await asyncio.to_thread(own_postgres.stop)
        await wait_logged(projector, log, b"rebuilding again")
        projector.send_signal(signal.SIGTERM)
        await asyncio.wait_for(projector.wait(), 60)
    finally:
        if projector.returncode is None:
            projector.send_signal(signal.SIGKILL)
            await projector.wait()
    assert projector.returncode == 0, log.read_text()[-3000:]
