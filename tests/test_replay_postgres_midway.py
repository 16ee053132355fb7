"""`jobrunner replay` with Postgres frozen, or its connections ended, in the middle of the
replay (past the command's check and connects): one sentence, POSTGRES_UNAVAILABLE, exit 69,
the live read models untouched, and the replay run again afterwards succeeds. It hung for as
long as Postgres stayed frozen (no bound on a statement), and a backend terminated under a
statement ended it in a traceback or in a sentence about a connect that never happened.

The fault comes as the loading starts: ``_load`` (the replay's loading phase) is wrapped to
inflict it first, for real (every Postgres process stopped; a restart; the replay's backends
terminated with ``pg_terminate_backend``); or, for the swap, just before its COMMIT is sent, when
the sentence must not say that nothing was swapped."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from jobrunner.common import postgresconnect, readmodelversion
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import replay as replay_module
from jobrunner.services.projector import replaylock
from jobrunner.services.projector.feed import EventFeed
from jobrunner.services.projector.replaylock import REPLAY_LOCK_LOST_EXIT
from tests.history_support import job_events, logged_job, publish, reading_system, wait_projected
from tests.system import System
from tests.tools.backend_activity import until_backends
from tests.tools.postgres_processes import TimedFreeze
from tests.tools.rebuild_backends import BackendsTerminated, WaitingWriteCancelled
from tests.tools.replay_in_process import replay_in_process
from tests.tools.swap_faults import (
    ENDINGS,
    LOCK_HOLDER_TERMINATED,
    assert_refused_then_replays,
    connections_ended,
    fault_at_swap,
    killed_during_the_commit,
    replay_succeeding_past_connections_ended,
    server_now,
)

pytestmark = pytest.mark.timeout(300)

WENT_AWAY = "went away during the replay"
JOBS = 20
# The probe's bound (replay_postgres_answer_seconds), short for the test: a probe goes out every
# second, so a freeze 2 s past the bound leaves one unanswered at least 1 s past it.
BOUND = 4.0


@pytest.fixture
async def private(settings: Settings, own_postgres: EmbeddedPostgres) -> Settings:
    return msgspec.structs.replace(
        settings, database_url=own_postgres.url, replay_postgres_answer_seconds=BOUND
    )


@pytest.fixture
async def live(private: Settings) -> AsyncIterator[System]:
    """A projector and API on the test's own Postgres, over a history of finished jobs."""
    history: list[events.Event] = []
    for n in range(JOBS // 2):
        history += logged_job(f"old{n}", lines=100, batch=25)
        history += job_events(f"plain{n}", minute=n, status=JobStatus.FAILED, result={"n": n})
    last = await publish(private, history)
    async with reading_system(private) as system:
        await wait_projected(private, last)
        yield system


async def _live_tables(settings: Settings) -> tuple[int, int, bool]:
    """The live jobs and lines, and whether a swap left ``readmodel_previous`` behind."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        jobs = await conn.fetchval("SELECT count(*) FROM readmodel.jobs")
        lines = await conn.fetchval("SELECT count(*) FROM readmodel.log_lines")
        previous = await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)",
            replay_module.PREVIOUS_SCHEMA,
        )
    finally:
        await conn.close()
    return int(jobs), int(lines), bool(previous)


def _tables_as(settings: Settings, before: tuple[int, int, bool]) -> Callable[[], Awaitable[None]]:
    """A check that the live tables are still as ``before`` (``_live_tables``)."""

    async def check() -> None:
        assert await _live_tables(settings) == before

    return check


async def _replay_frozen(
    frozen: TimedFreeze,
    where: str,
    private: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    must_end_frozen: bool = True,
) -> tuple[int | None, str]:
    """``jobrunner replay`` whose patched ``where`` calls ``frozen.freeze()``: its exit code and
    stderr, checked here that it got there and ended without a traceback, before the thaw
    (``must_end_frozen``)."""
    with frozen:
        code, err = await replay_in_process(private, monkeypatch, capsys)
        ended_frozen = not frozen.thawed
    assert frozen.pids, f"the {where} never came: " + err
    assert "Traceback" not in err, err
    if must_end_frozen:
        assert ended_frozen, "the command waited for the thaw:\n" + err
    return code, err


def _fault_as_loading_starts(
    monkeypatch: pytest.MonkeyPatch, fault: Callable[[EventFeed], Any]
) -> None:
    """The replay's loading starts with ``fault(feed)`` (awaited when it is a coroutine), the
    feed it loads from being open."""
    load = replay_module._load

    async def load_after_the_fault(
        pool: asyncpg.Pool, js: Any, names: Any, feed: EventFeed, *args: Any
    ) -> Any:
        done = fault(feed)
        if asyncio.iscoroutine(done):
            await done
        return await load(pool, js, names, feed, *args)

    monkeypatch.setattr(replay_module, "_load", load_after_the_fault)


@pytest.mark.parametrize(
    ("frozen_for", "answered"),
    [
        (BOUND - 2, True),
        (BOUND + 2, False),
    ],
    ids=["thawed-within-the-bound", "thawed-past-it"],
)
async def test_a_replay_with_postgres_frozen_mid_load_gives_up_at_its_probe_bound(
    live: System,
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    frozen_for: float,
    answered: bool,
) -> None:
    """Postgres thawed 2 s before the probe's bound (4 s, injected): the replay completes,
    exit 0. Frozen 2 s past it: the command has said POSTGRES_UNAVAILABLE and exited 69 before
    the thaw, the live tables as they were; after the thaw a replay succeeds. It waited for
    the thaw."""
    before = await _live_tables(private)
    frozen = TimedFreeze(own_postgres, frozen_for)
    _fault_as_loading_starts(monkeypatch, lambda feed: frozen.freeze())
    code, err = await _replay_frozen(
        frozen, "loading", private, monkeypatch, capsys, must_end_frozen=not answered
    )
    if answered:
        assert code == 0, err
        return
    await assert_refused_then_replays(
        (code, err),
        postgresconnect.UNAVAILABLE_EXIT,
        ["POSTGRES_UNAVAILABLE", WENT_AWAY],
        _tables_as(private, before),
        private,
        monkeypatch,
        capsys,
    )


async def test_a_replay_with_postgres_restarted_mid_load_says_postgres_went_away(
    live: System,
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Postgres restarted as the loading starts: POSTGRES_UNAVAILABLE "went away during the
    replay", exit 69, no traceback. (The live tables and a run again are shown by the frozen
    case: the server restarted from a thread here dies with that thread, its parent-death
    signal.)"""

    def stop_and_start() -> None:
        own_postgres.stop()
        own_postgres.start()

    def restart(feed: EventFeed) -> None:
        # In a thread of its own: the server's start runs an event loop of its own.
        restarting = threading.Thread(target=stop_and_start)
        restarting.start()
        restarting.join()

    _fault_as_loading_starts(monkeypatch, restart)
    code, err = await replay_in_process(private, monkeypatch, capsys)
    # Restarted on a port of its own choosing.
    private = msgspec.structs.replace(private, database_url=own_postgres.url)
    assert "Traceback" not in err, err
    assert code == postgresconnect.UNAVAILABLE_EXIT, err
    assert "POSTGRES_UNAVAILABLE" in err, err
    assert WENT_AWAY in err, err


async def test_a_replay_whose_statement_is_cancelled_mid_load_says_so_in_one_sentence(
    live: System,
    private: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator cancels the replay's write (pg_cancel_backend) while it waits in the loading:
    STATEMENT_CANCELLED, one sentence, exit 5, not said to be Postgres not answering; the live
    tables as they were, and a replay run again succeeds. Before session 35 it said
    "POSTGRES_UNAVAILABLE: ... does not answer (QueryCanceledError ..., a connect's bound 10 s):
    start Postgres ...", exit 69."""
    before = await _live_tables(private)
    fault = WaitingWriteCancelled(
        private.database_url,
        await server_now(private.database_url),
        f"{replay_module.REPLAY_SCHEMA}.checkpoint",
    )
    _fault_as_loading_starts(monkeypatch, fault)
    code, err = await replay_in_process(private, monkeypatch, capsys)
    assert fault.done(), "no write of the loading waited: " + err
    await assert_refused_then_replays(
        (code, err),
        postgresconnect.STATEMENT_CANCELLED_EXIT,
        ["jobrunner replay: STATEMENT_CANCELLED:", "nothing was swapped"],
        _tables_as(private, before),
        private,
        monkeypatch,
        capsys,
        says_not=["POSTGRES_UNAVAILABLE"],
    )


async def _terminated_mid_load(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    waiting_on: str | None,
) -> None:
    """The replay's backends terminated as the loading starts (``BackendsTerminated``): one
    sentence, POSTGRES_UNAVAILABLE, exit 69, the live tables as they were; a run again
    succeeds."""
    before = await _live_tables(settings)
    table = f"{replay_module.REPLAY_SCHEMA}.{waiting_on}" if waiting_on else None
    fault = BackendsTerminated(
        settings.database_url, await server_now(settings.database_url), table
    )
    _fault_as_loading_starts(monkeypatch, fault)
    code, err = await replay_in_process(settings, monkeypatch, capsys)
    assert fault.done(), "the loading never started: " + err
    await assert_refused_then_replays(
        (code, err),
        postgresconnect.UNAVAILABLE_EXIT,
        ["POSTGRES_UNAVAILABLE", WENT_AWAY],
        _tables_as(settings, before),
        settings,
        monkeypatch,
        capsys,
    )


@pytest.mark.parametrize("waiting_on", [None, "checkpoint"], ids=["idle", "a-write-waiting"])
async def test_a_replay_whose_backends_are_terminated_mid_load_says_postgres_went_away(
    live: System,
    private: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    waiting_on: str | None,
) -> None:
    """Every backend of the replay terminated (pg_terminate_backend) as its loading starts, idle
    or while its first write waits: POSTGRES_UNAVAILABLE, exit 69, the live tables as they
    were; a replay run again succeeds."""
    await _terminated_mid_load(private, monkeypatch, capsys, waiting_on)


async def test_a_replay_whose_swap_commit_goes_unanswered_says_it_may_have_swapped(
    live: System,
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Postgres frozen as the swap's COMMIT is sent, past the probe's bound: POSTGRES_UNAVAILABLE,
    exit 69, before the thaw, and the sentence says the swap may or may not have happened and
    to run the replay again (it said "nothing was swapped", which that COMMIT may belie); after
    the thaw a replay run again succeeds, the live read models as they were."""
    before = await _live_tables(private)
    code, err = await _replay_frozen_at_swap(private, own_postgres, monkeypatch, capsys, False)
    assert code == postgresconnect.UNAVAILABLE_EXIT, err
    assert "POSTGRES_UNAVAILABLE" in err, err
    assert "nothing was swapped" not in err, err
    assert "may or may not have been swapped in" in err, err
    assert "run `jobrunner replay` again" in err, err
    monkeypatch.undo()
    again, said = await replay_in_process(private, monkeypatch, capsys)
    assert again == 0, said
    assert await _live_tables(private) == before


async def test_a_replay_whose_postgres_freezes_after_the_swap_committed_succeeds_with_a_warning(
    live: System,
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Postgres frozen once the swap's COMMIT was answered (the rebuilt read models are live),
    past the probe's bound, as the replay drops readmodel_previous: the replay succeeded, so
    exit 0 before the thaw with a warning that readmodel_previous is left for the next replay
    to drop. It said POSTGRES_UNAVAILABLE and exited 69. After the thaw a replay succeeds."""
    code, err = await _replay_frozen_at_swap(private, own_postgres, monkeypatch, capsys, True)
    assert code == 0, err
    assert "POSTGRES_UNAVAILABLE" not in err, err
    assert "readmodel_previous left; the next replay or rebuild drops it" in err, err
    monkeypatch.undo()
    again, said = await replay_in_process(private, monkeypatch, capsys)
    assert again == 0, said
    assert (await _live_tables(private))[2] is False  # the next replay dropped it


@pytest.mark.parametrize(
    ("kind", "exit_code", "said"),
    [
        ("backends-terminated", postgresconnect.UNAVAILABLE_EXIT, "POSTGRES_UNAVAILABLE"),
        ("restarted", postgresconnect.UNAVAILABLE_EXIT, "POSTGRES_UNAVAILABLE"),
        (LOCK_HOLDER_TERMINATED, REPLAY_LOCK_LOST_EXIT, "REPLAY_LOCK_LOST"),
    ],
)
async def test_a_replay_whose_postgres_ends_its_swap_before_the_commit_swaps_nothing(
    live: System,
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    exit_code: int,
    said: str,
) -> None:
    """The replay's backends terminated, or Postgres restarted, once the swap's statements are
    done and before its COMMIT is sent: POSTGRES_UNAVAILABLE, exit 69, "nothing was swapped";
    only the swap's own session terminated (the probe answers): REPLAY_LOCK_LOST, exit 4. The
    live read models as they were either way; a replay run again succeeds."""
    before = await _live_tables(private)
    fault = await connections_ended(kind, private.database_url, own_postgres)
    came = fault_at_swap(monkeypatch, replay_module, after_commit=False, fault=fault)
    code, err = await replay_in_process(private, monkeypatch, capsys)
    assert came, "the swap never came: " + err
    await assert_refused_then_replays(
        (code, err),
        exit_code,
        [f"jobrunner replay: {said}", "nothing was swapped"]
        + ([] if kind == LOCK_HOLDER_TERMINATED else [WENT_AWAY]),
        _tables_as(private, before),
        private,
        monkeypatch,
        capsys,
    )


async def test_a_replay_whose_postgres_crashes_while_its_commit_waits_says_it_may_have_swapped(
    live: System,
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Postgres killed outright and started again while the swap's COMMIT waits for its answer
    (sent to a frozen server): POSTGRES_UNAVAILABLE, exit 69, the read models "may or may not
    have been swapped in" and run the replay again; the live tables as they were (the COMMIT
    never ran), and a replay run again succeeds."""
    before = await _live_tables(private)
    async with killed_during_the_commit(own_postgres) as fault:
        came = fault_at_swap(monkeypatch, replay_module, after_commit=False, fault=fault)
        code, err = await replay_in_process(private, monkeypatch, capsys)
    assert came, "the swap never came: " + err
    await assert_refused_then_replays(
        (code, err),
        postgresconnect.UNAVAILABLE_EXIT,
        [
            "POSTGRES_UNAVAILABLE",
            "may or may not have been swapped in",
            "run `jobrunner replay` again",
        ],
        _tables_as(private, before),
        private,
        monkeypatch,
        capsys,
    )


@pytest.mark.parametrize("kind", ENDINGS)
async def test_a_replay_whose_postgres_ends_its_connections_after_the_swap_committed_succeeds(
    live: System,
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    """The replay's backends terminated, or Postgres restarted or stopped, once the swap's
    COMMIT was answered: the replay succeeded, exit 0 and its report; readmodel_previous, if
    its drop failed (Postgres stopped), left with a warning saying so, and dropped by the next
    replay."""
    before = await _live_tables(private)
    err = await replay_succeeding_past_connections_ended(
        kind, replay_module, private, own_postgres, monkeypatch, capsys
    )
    jobs, lines, previous_left = await _live_tables(private)
    assert (jobs, lines) == before[:2]
    assert previous_left == (
        "readmodel_previous left; the next replay or rebuild drops it" in err
    ), err
    if kind == "stopped":
        assert previous_left, err
    monkeypatch.undo()
    again, said = await replay_in_process(private, monkeypatch, capsys)
    assert again == 0, said
    assert (await _live_tables(private))[2] is False  # the next replay dropped it


async def test_a_replay_under_a_server_wide_statement_timeout_succeeds(
    live: System,
    private: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A statement_timeout of 1 ms set for the database: the replay's statements run however
    long they take (its connections set none; the probe tells a frozen Postgres), exit 0."""
    conn = await asyncpg.connect(private.database_url)
    try:
        database = await conn.fetchval("SELECT quote_ident(current_database())")
        await conn.execute(f"ALTER DATABASE {database} SET statement_timeout = '1ms'")
    finally:
        await conn.close()
    code, err = await replay_in_process(private, monkeypatch, capsys)
    assert "Traceback" not in err, err
    assert code == 0, err


async def _replay_lock_held(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(await readmodelversion.rebuild_held(conn))
    finally:
        await conn.close()


async def test_a_replay_while_another_runs_says_so_in_one_sentence(
    live: System,
    private: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The replay lock held by another session (another replay): REPLAY_RUNNING, one
    sentence, exit 75, no traceback (it was a RuntimeError's traceback)."""
    other = await asyncpg.connect(private.database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", replaylock.REPLAY_LOCK)
        code, err = await replay_in_process(private, monkeypatch, capsys)
    finally:
        await other.close()
    assert "Traceback" not in err, err
    assert code == replaylock.REPLAY_RUNNING_EXIT, err
    assert "REPLAY_RUNNING: another replay is running" in err, err


async def test_a_replay_frozen_mid_statement_leaves_no_backend_holding_its_lock_after_the_thaw(
    live: System,
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Postgres frozen, past the probe's bound, while the comparison runs a long statement (in
    the swap's transaction: the replay and swap locks held): exit 69 before the thaw; after it
    the replay's backend notices its client gone (client_connection_check_interval) and lets go
    of the replay lock, and a replay run again succeeds. The orphan backend ran its statement
    to its end, holding the locks, and the rerun said "another replay is running"."""
    frozen = TimedFreeze(own_postgres, BOUND + 5)

    async def frozen_mid_statement(rebuilt: asyncpg.Connection, *args: Any) -> Any:
        # Hours of counting, in the swap's transaction: the comparison of a huge history.
        statement = asyncio.ensure_future(
            rebuilt.fetchval("SELECT count(*) FROM generate_series(1, 1e13::bigint)")
        )
        watcher = await asyncpg.connect(private.database_url)
        try:
            # Fails at once if the statement ended (failed) before it was seen running.
            await until_backends(
                watcher, query_like="%generate_series(1, 1e13%", active=True, unless_ended=statement
            )
        finally:
            await watcher.close()
        frozen.freeze()
        return await statement

    monkeypatch.setattr(replay_module, "compare", frozen_mid_statement)
    code, err = await _replay_frozen(frozen, "comparison", private, monkeypatch, capsys)
    assert code == postgresconnect.UNAVAILABLE_EXIT, err
    monkeypatch.undo()
    # The backend checks its client every second: let go within a few (it ran for hours).
    async with asyncio.timeout(30):
        while await _replay_lock_held(private.database_url):  # noqa: ASYNC110 - Postgres state
            await asyncio.sleep(0.2)
    again, said = await replay_in_process(private, monkeypatch, capsys)
    assert again == 0, said


async def _replay_frozen_at_swap(
    private: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    after_commit: bool,
) -> tuple[int | None, str]:
    """``jobrunner replay`` with Postgres frozen past the probe's bound at its swap: as the
    COMMIT is sent, or (``after_commit``) once it was answered, as readmodel_previous is dropped.
    Its exit code and stderr; checked here that it ended before the thaw, without a traceback."""
    frozen = TimedFreeze(own_postgres, BOUND + 5)
    swap_transaction = replaylock.swap_transaction  # the one the replay imported

    @contextlib.asynccontextmanager
    async def frozen_at_swap(*args: Any) -> AsyncIterator[asyncpg.Connection]:
        async with swap_transaction(*args) as conn:
            yield conn
            if not after_commit:
                frozen.freeze()  # the swap's statements done, its COMMIT next
        if after_commit:
            frozen.freeze()  # committed and answered: the drop of readmodel_previous next

    monkeypatch.setattr(replay_module, "swap_transaction", frozen_at_swap)
    return await _replay_frozen(frozen, "swap", private, monkeypatch, capsys)
