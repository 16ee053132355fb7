"""The current jobrunner started on an older one's state: read models rebuilt or refused, never
served half-migrated; a newer database or event stream refused (README "Upgrading")."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from dataclasses import replace

import asyncpg
import pytest

from jobrunner.common import eventstore, readmodelversion
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.refusal import REFUSED_EXIT, StateRefused
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api import readmodelgate
from jobrunner.services.projector import upgrade
from jobrunner.services.projector.replay import Progress
from jobrunner.services.projector.replaylock import REPLAY_LOCK, ReplayLockLost
from tests.cli_support import cli_env, run_cli
from tests.history_support import without_auth
from tests.replaylock_support import (
    swap_held_after_its_check,
    terminate_lock_holder,
    wait_for_the_swap,
)
from tests.system import System
from tests.upgrade_support import complete, older_state, read_models, wait_version

CURRENT = readmodelversion.READMODEL_VERSION


async def test_a_projector_on_older_read_models_rebuilds_them_from_the_stream(
    settings: Settings,
) -> None:
    """Read models of an older jobrunner are rebuilt, with progress reported, and come out
    complete: every job, line and batch the events tell of, at this jobrunner's version."""
    made = await older_state(settings)
    seen: list[Progress] = []
    outcome = await upgrade.ensure_current(
        settings, on_progress=lambda p: seen.append(replace(p)), progress_interval=0
    )
    found = await read_models(settings)
    assert outcome.rebuilt
    assert outcome.found == readmodelversion.UNVERSIONED
    assert complete(found, made) == []
    assert found["schemas"] == {READ_SCHEMA}  # the old tables and the work schema are gone
    assert [p.phase for p in seen][-3:] == ["indexing", "swapping", "done"]
    assert seen[-1].done >= made.last_seq
    assert seen[-1].target >= made.last_seq


_BIG_TABLES_OPTIONS = (
    "SELECT reloptions FROM pg_class JOIN pg_namespace AS n ON n.oid = relnamespace "
    "WHERE nspname = $1 AND relname IN ('jobs', 'log_lines', 'batches') ORDER BY relname"
)


async def test_a_rebuild_loads_its_tables_with_autovacuum_off(settings: Settings) -> None:
    """The tables a rebuild loads into have autovacuum off (it would chase the bulk load for the
    second core), as a replay's."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", REPLAY_LOCK)
        assert not await upgrade._resume_or_start(conn, conn.get_server_pid())
        found = await conn.fetch(_BIG_TABLES_OPTIONS, readmodelversion.UPGRADE_SCHEMA)
    finally:
        await conn.close()
    assert [row["reloptions"] for row in found] == [["autovacuum_enabled=off"]] * 3


async def test_the_rebuilt_read_models_are_indexed_analyzed_and_autovacuumed(
    settings: Settings,
) -> None:
    """What a rebuild swaps in has every index of a fresh install, planner statistics, and
    autovacuum on again, like tables the projector created."""
    await older_state(settings)
    await upgrade.ensure_current(settings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        options = await conn.fetch(_BIG_TABLES_OPTIONS, READ_SCHEMA)
        indexes = {
            row["indexname"]
            for row in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = $1", READ_SCHEMA
            )
        }
        analyzed = await conn.fetchval(
            "SELECT count(DISTINCT tablename) FROM pg_stats WHERE schemaname = $1 "
            "AND tablename IN ('jobs', 'log_lines')",
            READ_SCHEMA,
        )
    finally:
        await conn.close()
    assert [row["reloptions"] for row in options] == [None, None, None]
    assert {"jobs_search_idx", "jobs_created_idx", "batches_page_idx"} <= indexes
    assert analyzed == 2


async def test_a_rebuild_whose_lock_session_ended_swaps_nothing(settings: Settings) -> None:
    """The session holding the replay lock ends before the swap (an idle timeout, a proxy):
    another rebuild may have taken the lock and refilled the rebuilt schema meanwhile, so nothing
    is swapped (REPLAY_LOCK_LOST, as a replay's), the older read models stay, and the next start
    rebuilds them. (The swap used to go ahead.)"""
    made = await older_state(settings)

    def end_the_lock_session(progress: Progress) -> None:
        if progress.phase == "swapping":  # the last step before the swap transaction
            thread = threading.Thread(target=asyncio.run, args=(terminate_lock_holder(settings),))
            thread.start()
            thread.join()

    with pytest.raises(ReplayLockLost, match="REPLAY_LOCK_LOST"):
        await upgrade.ensure_current(settings, on_progress=end_the_lock_session)
    assert (await read_models(settings))["version"] == readmodelversion.UNVERSIONED
    assert (await upgrade.ensure_current(settings)).rebuilt  # the lock went with the session
    assert complete(await read_models(settings), made) == []


async def test_a_rebuild_whose_lock_session_ends_after_the_check_swaps_nothing(
    settings: Settings,
) -> None:
    """The session holding the replay lock ends after the swap checked it, before the commit (a
    window of milliseconds, held open here): the swap runs on that session, so it cannot commit
    without the lock; ``jobrunner replay`` says so and exits 4, the older read models stay."""
    made = await older_state(settings)
    async with swap_held_after_its_check(settings) as holder:
        command = asyncio.ensure_future(run_command("replay", env=cli_env(settings)))
        await wait_for_the_swap(holder, command)
        await terminate_lock_holder(settings)
    code, err = await command
    assert code == 4, err
    assert "REPLAY_LOCK_LOST" in err
    assert (await read_models(settings))["version"] == readmodelversion.UNVERSIONED
    assert (await upgrade.ensure_current(settings)).rebuilt
    assert complete(await read_models(settings), made) == []


async def test_the_api_answers_503_until_the_rebuilt_read_models_are_swapped_in(
    settings: Settings,
) -> None:
    """While the read models are older, every read answers 503 READ_MODELS_REBUILDING with the
    rebuild's progress (health says degraded); once the projector swapped them in, the API serves
    the complete tables."""
    made = await older_state(settings)
    system = System(without_auth(settings))
    await system.start_api()
    try:
        async with system.client() as client:
            refused = await client.get("/api/jobs")
            page = await client.get("/jobs", headers={"Accept": "text/html"})
            health = await client.get("/health")
            await system.start_projector()
            await wait_version(settings, CURRENT)
            listed = await client.get("/api/jobs", params={"limit": 100})
    finally:
        await system.stop()
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "READ_MODELS_REBUILDING"
    assert error["expected_version"] == CURRENT
    assert error["rebuild"]["stream_last_seq"] == made.last_seq
    assert refused.headers["retry-after"] == str(readmodelgate.RETRY_AFTER_SECONDS)
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/plain")
    assert "being rebuilt" in page.text
    assert health.status_code == 200
    assert health.json()["read_models"]["state"] == "rebuilding"
    assert health.json()["read_models"]["rebuild"]["stream_last_seq"] == made.last_seq
    assert "READ_MODELS_REBUILDING" in [p["code"] for p in health.json()["problems"]]
    assert listed.status_code == 200
    assert {job["id"]: job["status"] for job in listed.json()["items"]} == made.statuses


async def newer_database(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await upgrade.ensure_current(settings)
        await readmodelversion.record(conn, READ_SCHEMA, CURRENT + 1, by="a newer jobrunner")
    finally:
        await conn.close()


async def test_a_projector_refuses_read_models_of_a_newer_jobrunner(settings: Settings) -> None:
    """Read models written by a newer jobrunner stop the projector with one sentence naming both
    versions, and stay as they were."""
    await newer_database(settings)
    with pytest.raises(StateRefused) as refused:
        await upgrade.ensure_current(settings)
    assert f"version {CURRENT + 1}" in str(refused.value)
    assert (await read_models(settings))["version"] == CURRENT + 1


async def test_the_api_refuses_read_models_of_a_newer_jobrunner(settings: Settings) -> None:
    """An API older than the read models answers 503 READ_MODELS_NEWER, and its health says it
    cannot serve (a load balancer sends requests to a newer instance)."""
    await newer_database(settings)
    system = System(without_auth(settings))
    await system.start_api()
    try:
        async with system.client() as client:
            answer = await client.get("/api/jobs")
            health = await client.get("/health")
    finally:
        await system.stop()
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "READ_MODELS_NEWER"
    assert health.status_code == 503
    assert health.json()["read_models"]["state"] == "newer"


async def run_command(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_without_auto_rebuild_the_projector_refuses_and_names_the_command(
    settings: Settings,
) -> None:
    """With readmodel_auto_rebuild off, a projector on older read models exits at once with one
    line naming `jobrunner replay`, and leaves the tables as they were."""
    await older_state(settings)
    env = {**cli_env(settings), "JOBRUNNER_READMODEL_AUTO_REBUILD": "false"}
    code, err = await run_command("projector", env=env)
    assert code == REFUSED_EXIT
    assert err.count("\n") == 1
    assert err.startswith("jobrunner: ")
    assert "`jobrunner replay`" in err
    assert "readmodel_auto_rebuild is off" in err
    assert (await read_models(settings))["version"] == readmodelversion.UNVERSIONED


async def test_jobrunner_replay_rebuilds_older_read_models(settings: Settings) -> None:
    """The command the refusal names rebuilds older read models without a projector running
    (there is nothing to compare them with) and swaps them in."""
    made = await older_state(settings)
    out, _ = await run_cli("replay", env=cli_env(settings))
    assert "older than this jobrunner" in out
    assert complete(await read_models(settings), made) == []


async def test_a_stream_of_a_newer_event_contract_is_refused(settings: Settings) -> None:
    """A service starting against a stream whose events follow a newer contract refuses with one
    sentence naming both versions."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    try:
        js = nc.jetstream()
        config = eventstore.stream_config(names, settings)
        newer = str(events.CONTRACT_VERSION + 1)
        await js.add_stream(replace(config, metadata={names.contract_metadata_key: newer}))
        with pytest.raises(StateRefused) as refused:
            await eventstore.ensure_topology(js, names, settings)
        metadata = (await js.stream_info(names.stream)).config.metadata or {}
    finally:
        await eventstore.close(nc)
    assert f"contract version {newer}" in str(refused.value)
    assert metadata[names.contract_metadata_key] == newer  # left as the newer writer recorded


async def test_a_stream_from_before_contract_versions_is_read_and_recorded(
    settings: Settings,
) -> None:
    """A stream created before contract versions were recorded is taken as version 1, and the
    first service to start records the version its events follow."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    try:
        js = nc.jetstream()
        await js.add_stream(replace(eventstore.stream_config(names, settings), metadata=None))
        await eventstore.ensure_topology(js, names, settings)
        metadata = (await js.stream_info(names.stream)).config.metadata or {}
    finally:
        await eventstore.close(nc)
    assert metadata[names.contract_metadata_key] == str(events.CONTRACT_VERSION)
