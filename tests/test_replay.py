"""Replay and crash recovery: read models rebuilt from the stream equal the live ones."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import msgspec
import pytest
import structlog

from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.readmodelversion import UPGRADE_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.services.projector import replay as replay_module
from jobrunner.services.projector import store, upgrade
from jobrunner.services.projector.replay import (
    PREVIOUS_SCHEMA,
    REPLAY_SCHEMA,
    Progress,
    ReplayMismatch,
    _fresh_schema,
    build_indexes,
    replay,
)
from jobrunner.services.projector.replaylock import (
    REPLAY_LOCK,
    ReplayLockLost,
    ReplayRunning,
    connect_lock_holder,
    swap_transaction,
)
from tests.cli_support import cli_env, run_cli, start_cli
from tests.history_support import (
    job_events,
    logged_job,
    publish,
    reading_system,
    wait_projected,
)
from tests.replaylock_support import (
    swap_held_after_its_check,
    terminate_lock_holder,
    wait_for_the_swap,
)
from tests.system import System
from tests.tools.backend_activity import until_backends


async def checkpoint(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return int(await conn.fetchval("SELECT last_seq FROM readmodel.checkpoint"))
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[System]:
    """A projector and API over a history of finished jobs with logs."""
    history: list[events.Event] = []
    for n in range(30):
        history += logged_job(f"old{n}", lines=200, stderr_every=3, batch=50)
        history += job_events(f"plain{n}", minute=n, status=JobStatus.FAILED, result={"n": n})
    last = await publish(settings, history)
    async with reading_system(settings) as system:
        await wait_projected(settings, last)
        yield system


async def keep_publishing(settings: Settings, stop: asyncio.Event) -> int:
    """Jobs keep arriving and printing while the replay runs; returns how many jobs."""
    n = 0
    while not stop.is_set():
        await publish(settings, logged_job(f"live{n}", lines=30, batch=10))
        n += 1
        await asyncio.sleep(0.05)
    return n


async def test_replay_swaps_in_identical_tables_while_jobs_keep_arriving(
    live: System, settings: Settings
) -> None:
    """A replay under load rebuilds tables equal row by row, and the API and projector go on."""
    stop = asyncio.Event()
    publisher = asyncio.create_task(keep_publishing(settings, stop))
    statuses: list[int] = []

    async def keep_reading() -> None:
        async with live.client() as client:
            while not stop.is_set():
                statuses.append((await client.get("/api/jobs", params={"limit": 5})).status_code)

    reader = asyncio.create_task(keep_reading())
    seen: list[Progress] = []
    report = await replay(settings, on_progress=seen.append, progress_interval=0.0)
    # Jobs still arrive after the swap: the live projector carries on in the rebuilt schema.
    more = await publish(settings, logged_job("after-swap", lines=5))
    stop.set()
    published = await publisher
    await reader
    await wait_projected(settings, max(more, await checkpoint(settings)))

    assert report.differences == {}
    assert report.events >= report.checkpoint - 1
    assert seen
    assert seen[-1].done <= report.events
    assert set(statuses) == {200}
    async with live.client() as client:
        job = (await client.get("/api/jobs/after-swap")).json()
    conn = await asyncpg.connect(settings.database_url)
    try:
        jobs = await conn.fetchval("SELECT count(*) FROM readmodel.jobs")
    finally:
        await conn.close()
    assert job["log_count"] == 5
    assert jobs == 60 + published + 1
    # And a second replay, from the rebuilt tables the projector kept writing, is identical too.
    again = await replay(settings)
    assert again.differences == {}
    assert again.tables["log_lines"] == 30 * 200 + published * 30 + 5


async def test_a_replay_that_has_read_the_whole_stream_does_not_wait_for_more(
    live: System, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once every event the stream held is applied, the replay goes on to index and swap: it
    does not wait for a fetch to come back empty (that wait was half a second of every replay;
    made a minute here, so that waiting at all shows)."""
    monkeypatch.setattr(replay_module, "LOAD_FETCH_WAIT", 60.0)
    async with asyncio.timeout(30):
        report = await replay(settings)
    assert report.differences == {}
    assert report.checkpoint == await checkpoint(settings)


async def test_replay_refuses_to_swap_when_tables_differ(live: System, settings: Settings) -> None:
    """If the live tables were changed behind the projector's back, nothing is swapped."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("UPDATE readmodel.jobs SET status = 'completed' WHERE id = 'plain3'")
        with pytest.raises(ReplayMismatch) as raised:
            await replay(settings)
        assert raised.value.differences["jobs"] == ["only live plain3", "only rebuilt plain3"]
        # The first differing row's columns are named: what to look at, without a query.
        assert raised.value.differing_columns == {"jobs": ("plain3", ["status"])}
        assert "plain3 differs in status" in str(raised.value)
        status = await conn.fetchval("SELECT status FROM readmodel.jobs WHERE id = 'plain3'")
    finally:
        await conn.close()
    assert status == "completed"
    report = await replay(settings, accept_differences=True)
    async with live.client() as client:
        job = (await client.get("/api/jobs/plain3")).json()
    assert report.differences
    assert report.differing_columns == {"jobs": ("plain3", ["status"])}
    assert job["status"] == "failed"


async def test_only_one_replay_runs_at_a_time(live: System, settings: Settings) -> None:
    """A second replay started while one is building its tables is refused, not interleaved."""
    second: list[asyncio.Future[object]] = []

    def start_another(progress: Progress) -> None:
        if progress.phase == "indexing" and not second:
            second.append(asyncio.ensure_future(replay(settings)))

    report = await replay(settings, on_progress=start_another)
    assert second
    with pytest.raises(ReplayRunning, match="REPLAY_RUNNING: another replay is running"):
        await second[0]
    assert report.differences == {}
    assert (await replay(settings)).differences == {}  # and the lock went with the first


async def test_a_replay_whose_lock_session_ended_refuses_to_swap(
    live: System, settings: Settings
) -> None:
    """Once the session holding the replay lock has ended, a second replay may have rebuilt the
    replay's schema (even emptied it): the replay refuses to swap, and the live tables stay."""
    before = await checkpoint(settings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        live_jobs = await conn.fetch("SELECT * FROM readmodel.jobs ORDER BY id")

        def end_the_lock_session(progress: Progress) -> None:
            if progress.phase == "comparing":  # the last step before the swap transaction
                thread = threading.Thread(
                    target=asyncio.run, args=(terminate_lock_holder(settings),)
                )
                thread.start()
                thread.join()

        with pytest.raises(ReplayLockLost, match="REPLAY_LOCK_LOST"):
            await replay(settings, on_progress=end_the_lock_session)
        assert await conn.fetch("SELECT * FROM readmodel.jobs ORDER BY id") == live_jobs
        schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'readmodel%' ORDER BY 1"
        )
    finally:
        await conn.close()
    assert await checkpoint(settings) == before
    assert [row["nspname"] for row in schemas] == ["readmodel", "readmodel_replay"]
    assert (await replay(settings)).differences == {}  # the lock went with the session


async def test_a_replay_whose_lock_session_ends_after_the_check_swaps_nothing(
    live: System, settings: Settings
) -> None:
    """The session holding the replay lock ends after the swap checked it holds the lock, before
    the commit (a window of milliseconds, held open here): the swap runs on that session, so it
    cannot commit without the lock, and the live tables stay (it used to swap them)."""
    before = await checkpoint(settings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        live_jobs = await conn.fetch("SELECT * FROM readmodel.jobs ORDER BY id")
        async with swap_held_after_its_check(settings) as holder:
            replaying = asyncio.ensure_future(replay(settings))
            await wait_for_the_swap(holder, replaying)
            await terminate_lock_holder(settings)
        with pytest.raises(ReplayLockLost, match="REPLAY_LOCK_LOST"):
            await replaying
        assert await conn.fetch("SELECT * FROM readmodel.jobs ORDER BY id") == live_jobs
    finally:
        await conn.close()
    assert await checkpoint(settings) == before
    assert (await replay(settings)).differences == {}  # the lock went with the session


async def _fresh_upgrade_schema(conn: asyncpg.Connection, lock_holder_pid: int) -> None:
    assert not await upgrade._resume_or_start(conn, lock_holder_pid)


async def _fresh_replay_schema(conn: asyncpg.Connection, lock_holder_pid: int) -> None:
    await _fresh_schema(conn, line_key=True, lock_holder_pid=lock_holder_pid)


@pytest.mark.parametrize(
    ("rebuilt", "fresh"),
    [(REPLAY_SCHEMA, _fresh_replay_schema), (UPGRADE_SCHEMA, _fresh_upgrade_schema)],
    ids=["replay", "rebuild"],
)
async def test_a_replay_that_lost_its_lock_leaves_what_another_swap_made_live(
    settings: Settings,
    rebuilt: str,
    fresh: Callable[[asyncpg.Connection, int], Awaitable[None]],
) -> None:
    """A replay (or rebuild) whose lock session ended goes on on its pool and starts its schema
    afresh (the reload with the lines' key) while the replay that took the lock swaps: its drop,
    queued behind that swap, dropped the schema the swap had just renamed live. Now it waits
    for the swap, finds the lock gone and drops nothing."""
    setup = await asyncpg.connect(settings.database_url)
    lost = await connect_lock_holder(
        settings.database_url, settings.projector_postgres_dead_seconds
    )
    holder = await connect_lock_holder(
        settings.database_url, settings.projector_postgres_dead_seconds
    )
    pool_conn = await connect_lock_holder(
        settings.database_url, settings.projector_postgres_dead_seconds
    )
    try:
        await store.create_schema(setup)  # the live read models
        lost_pid = lost.get_server_pid()
        assert await lost.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK)
        assert await setup.fetchval("SELECT pg_terminate_backend($1, 10000)", lost_pid)
        await holder.execute("SELECT pg_advisory_lock($1)", REPLAY_LOCK)
        # The lock holder's schema, loaded (no version in it: a rebuild's starts afresh).
        await store.create_schema(setup, rebuilt, indexes=False)
        async with swap_transaction(holder) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", store.SWAP_LOCK)
            await conn.fetchval(f"SELECT count(*) FROM {rebuilt}.jobs")  # compared, as a swap
            starting_afresh = asyncio.ensure_future(fresh(pool_conn, lost_pid))
            # Asked on the swap's open transaction: backend_activity clears the snapshot of
            # pg_stat_activity Postgres keeps for it.
            await until_backends(
                conn,
                pid=pool_conn.get_server_pid(),
                waiting_on_a_lock=True,
                unless_ended=starting_afresh,
                timeout=60,
            )
            await conn.execute(f"DROP SCHEMA IF EXISTS {PREVIOUS_SCHEMA} CASCADE")
            await conn.execute(f"ALTER SCHEMA {READ_SCHEMA} RENAME TO {PREVIOUS_SCHEMA}")
            await conn.execute(f"ALTER SCHEMA {rebuilt} RENAME TO {READ_SCHEMA}")
        (outcome,) = await asyncio.gather(starting_afresh, return_exceptions=True)
        schemas = await setup.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'readmodel%' ORDER BY 1"
        )
    finally:
        lost.terminate()  # its backend ended above
        for conn in (setup, holder, pool_conn):
            await conn.close()
    assert [row["nspname"] for row in schemas] == [READ_SCHEMA, PREVIOUS_SCHEMA]
    assert isinstance(outcome, ReplayLockLost)


async def test_a_failing_index_build_raises_its_own_error(settings: Settings) -> None:
    """One of the builds run at once fails: its error comes out as itself, as a single build's
    would (not in an exception group: `jobrunner replay` printed a nested traceback)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", REPLAY_LOCK)
        await _fresh_schema(conn, line_key=False, lock_holder_pid=conn.get_server_pid())
        await conn.execute(f"DROP TABLE {REPLAY_SCHEMA}.batches CASCADE")
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await build_indexes(pool, REPLAY_SCHEMA, line_key=True)
    finally:
        await pool.close()


async def test_the_jobs_get_their_statistics_while_the_lines_key_is_still_being_built(
    settings: Settings,
) -> None:
    """The jobs' statistics and autovacuum (ANALYZE takes a third of a second a million events)
    come as soon as the jobs' own indexes are built, beside the lines' key, the longest build,
    not after it: the indexing phase ends sooner on two cores."""
    conn = await asyncpg.connect(settings.database_url)
    blocker = await asyncpg.connect(settings.database_url)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
    building: asyncio.Future[bool] | None = None
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", REPLAY_LOCK)
        await _fresh_schema(conn, line_key=False, lock_holder_pid=conn.get_server_pid())
        held = blocker.transaction()
        await held.start()
        # The lines' key build waits for this lock (CREATE INDEX shares the table with no writer).
        await blocker.execute(f"LOCK TABLE {REPLAY_SCHEMA}.log_lines IN ROW EXCLUSIVE MODE")
        building = asyncio.ensure_future(build_indexes(pool, REPLAY_SCHEMA, line_key=True))
        async with asyncio.timeout(60):
            while not await conn.fetchval(
                "SELECT reltuples >= 0 AND reloptions IS NULL FROM pg_class "
                "WHERE oid = $1::regclass",
                f"{REPLAY_SCHEMA}.jobs",
            ):
                if building.done():
                    building.result()
                    raise AssertionError("the builds ended while the lines' table was locked")
                await asyncio.sleep(0.05)  # nothing to wait on but the catalog
        lines_key_built = await conn.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename = 'log_lines'",
            REPLAY_SCHEMA,
        )
        assert not building.done()
        await held.rollback()
        assert await building is True
    finally:
        await blocker.close()  # its lock with it, should the test have failed holding it
        if building is not None and not building.done():
            building.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await building
        await conn.close()
        await pool.close()
    assert lines_key_built == 0


async def test_the_swapped_in_tables_are_indexed_analyzed_and_autovacuumed(
    live: System, settings: Settings
) -> None:
    """A replay loads bare tables; what it swaps in has every index the live schema had, planner
    statistics, and autovacuum on, like tables the projector created."""
    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'readmodel' ORDER BY 1"
    tables = "('jobs', 'log_lines')"
    conn = await asyncpg.connect(settings.database_url)
    try:
        before = [tuple(row) for row in await conn.fetch(indexes)]
        await replay(settings)
        after = [tuple(row) for row in await conn.fetch(indexes)]
        analyzed = await conn.fetchval(
            "SELECT count(DISTINCT tablename) FROM pg_stats "
            f"WHERE schemaname = 'readmodel' AND tablename IN {tables}"
        )
        options = await conn.fetch(
            "SELECT reloptions FROM pg_class JOIN pg_namespace AS n ON n.oid = relnamespace "
            f"WHERE nspname = 'readmodel' AND relname IN {tables}"
        )
    finally:
        await conn.close()
    assert "jobs_search_idx" in {name for name, _ in before}
    assert after == before
    assert analyzed == 2
    assert [row["reloptions"] for row in options] == [None, None]


async def test_projector_killed_mid_batch_resumes_without_duplicate_or_gap(
    settings: Settings,
) -> None:
    """SIGKILL during projection, then a restart: every line exactly once, counts exact."""
    lines = 40_000  # one line an event: several batches of the projector's, so a kill lands mid-way
    last = await publish(settings, logged_job("big", lines=lines, batch=1))
    env = {**cli_env(settings), "JOBRUNNER_LOG_FORMAT": "json"}

    async def start() -> asyncio.subprocess.Process:
        return await start_cli("projector", env=env, output=asyncio.subprocess.DEVNULL)

    first = await start()
    async with asyncio.timeout(60):
        while (done := await checkpoint(settings)) == 0:  # noqa: ASYNC110 (another process)
            await asyncio.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    killed_at = await checkpoint(settings)
    second = await start()
    try:
        await wait_projected(settings, last, timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()

    conn = await asyncpg.connect(settings.database_url)
    try:
        count, distinct, top = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT seq), max(seq) FROM readmodel.log_lines "
            "WHERE job_id = 'big'"
        )
        log_count = await conn.fetchval("SELECT log_count FROM readmodel.jobs WHERE id = 'big'")
    finally:
        await conn.close()
    assert 0 < done <= killed_at < last, "the kill must land before the end"
    assert (count, distinct, top) == (lines, lines, lines)
    assert log_count == lines


async def test_replay_command_shows_progress_and_the_verdict(
    live: System, settings: Settings
) -> None:
    """`jobrunner replay` prints events per second while it runs and ends saying tables match."""
    out, err = await run_cli("replay", env=cli_env(settings), timeout=120)
    assert "events/s" in err
    assert "identical to the live read models; swapped in" in out


def old_and_recent_job() -> list[events.Event]:
    """A job that finished in 2026-01 with two lines (past a 30-day retention) and a recent one."""
    old = job_events("old", minute=0, status=JobStatus.COMPLETED, lines=["x", "y"])
    recent = [
        events.JobRequested(job_id="recent", job_type="scraper"),
        events.StatusChanged(
            job_id="recent", event_id=events.terminal_event_id("recent"), status=JobStatus.FAILED
        ),
    ]
    return old + recent


async def test_read_model_retention_prunes_old_jobs_and_replay_agrees(
    settings: Settings,
) -> None:
    """Finished jobs older than readmodel_retention_days leave Postgres; a replay still matches."""
    settings = msgspec.structs.replace(settings, readmodel_retention_days=30)
    last = await publish(settings, old_and_recent_job())
    async with reading_system(settings) as system:
        await wait_projected(settings, last)
        # Retention runs when the projector starts and every ten minutes after.
        await system.stop_service("projector")
        await system.start_projector()
        async with system.client() as client:
            async with asyncio.timeout(30):
                while (await client.get("/api/jobs/old")).status_code != 404:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            kept = await client.get("/api/jobs/recent")
        report = await replay(settings)
    assert kept.status_code == 200
    assert report.differences == {}
    assert report.tables["jobs"] == 1
    assert report.tables["log_lines"] == 0


async def test_replay_applies_a_retention_the_live_projector_has_not_applied_yet(
    settings: Settings,
) -> None:
    """Jobs aged past readmodel_retention_days since the projector last pruned (or retention was
    just switched on): the replay cuts both sides alike, agrees, and swaps."""
    last = await publish(settings, old_and_recent_job())
    async with reading_system(settings) as system:  # the live projector keeps every job
        await wait_projected(settings, last)
        with_retention = msgspec.structs.replace(settings, readmodel_retention_days=30)
        report = await replay(with_retention)
        async with system.client() as client:
            gone = await client.get("/api/jobs/old")
    assert report.differences == {}
    assert report.tables["jobs"] == 1
    assert gone.status_code == 404


async def test_a_line_stored_twice_makes_the_replay_load_again_with_the_key_and_agree(
    live: System, settings: Settings
) -> None:
    """A replay loads the lines without their primary key and builds it afterwards; a line stored
    twice in the stream (re-published past the de-duplication window) makes that build fail, and
    the replay loads again with the key in place, keeping the line once as the live projector
    did: the tables agree and are swapped in, with the key."""
    twice = logged_job("twice", lines=20, batch=10)
    first_lines = next(e for e in twice if isinstance(e, events.LineLogged))
    again = msgspec.structs.replace(first_lines, event_id=events.new_event_id())
    last = await publish(settings, [*twice, again])
    await wait_projected(settings, last)
    with structlog.testing.capture_logs() as logs:
        report = await replay(settings)
    assert report.differences == {}
    reloads = [e for e in logs if e["event"].startswith("replay loads again with the lines' key")]
    assert len(reloads) == 1
    async with live.client() as client:
        job = (await client.get("/api/jobs/twice")).json()
        page = (await client.get("/api/jobs/twice/logs", params={"limit": 100})).json()
    assert job["log_count"] == 20
    assert [line["seq"] for line in page["items"]] == list(range(1, 21))
    conn = await asyncpg.connect(settings.database_url)
    try:
        key = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'readmodel' "
            "AND indexname = 'log_lines_pkey'"
        )
    finally:
        await conn.close()
    assert "(job_id, seq)" in key
