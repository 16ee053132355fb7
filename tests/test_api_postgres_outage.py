"""The API while Postgres is away (stopped) or frozen (SIGSTOPped, every backend with it): a read
of the read models answers 503 with a code and a sentence, never a 500 or a hang; a freeze
shorter than the read deadline (``api_read_timeout_seconds``) is waited out; the API serves
again on its own once Postgres is back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import types
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import nats
import pytest
from structlog.testing import capture_logs

from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.logging import LogThrottle
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api import errors, health
from jobrunner.services.api.context import health_pool, read_pool
from jobrunner.services.api.readmodelgate import ReadModelGate
from jobrunner.services.api.readpool import ReadModelsLost, ReadModelsTimeout, ReadPool
from tests.freeze import frozen
from tests.history_support import job_events, publish, reading_system, wait_projected
from tests.system import System
from tests.tools.api_parts import pooled_connections, read_pool_of
from tests.tools.backend_activity import until_backends
from tests.tools.postgres_processes import frozen_postgres

# The API's read deadline and its health check's, short so the tests stay fast.
DEADLINE = 2.5
HEALTH_DEADLINE = 0.5
# A live stream's reads: another bound than health's (as in a deployment: 5 s and 1 s), so
# that a test meeting either is told apart.
STREAM_BOUND = 1.0
# The API's pooled connections (context.read_pool), and more readers than that.
POOL_SIZE = 10
READERS = 25
# When a test whose readers must be answered while Postgres is frozen thaws it anyway: far past
# any deadline (10 times), only so that readers that wait for the thaw (the fault) end the
# test; below read_job's client deadline (30 s), so that they are counted rather than cut.
GIVE_UP_SECONDS = 25.0


@pytest.fixture
async def system(settings: Settings, own_postgres: EmbeddedPostgres) -> AsyncIterator[System]:
    settings = msgspec.structs.replace(
        settings,
        database_url=own_postgres.url,
        api_read_timeout_seconds=DEADLINE,
        health_postgres_timeout_seconds=HEALTH_DEADLINE,
        stream_read_timeout_seconds=STREAM_BOUND,
    )
    async with reading_system(settings) as running:
        await wait_projected(settings, await publish(settings, job_events("before")))
        yield running


# The wait each 503 a read meets with Postgres away or frozen asks for (errors.py).
RETRY_AFTER_BY_CODE = {
    "READ_MODELS_UNAVAILABLE": "2",
    "READ_MODELS_TIMEOUT": str(errors.READ_TIMEOUT_RETRY_AFTER),
}


async def read_job(system: System, path: str = "/api/jobs/before") -> tuple[int, dict[str, Any]]:
    # The client's own 30 s deadline only keeps a hang from holding the test for ever.
    async with system.client() as client, client.stream("GET", path) as response:
        if response.headers["content-type"] != "application/json":
            return response.status_code, {}  # a page or an open stream: its status says it
        await response.aread()
    body = response.json()
    if response.status_code == 503:
        wait = RETRY_AFTER_BY_CODE.get(body["error"]["code"], "(no code of Postgres away)")
        assert response.headers.get("retry-after") == wait, (response.headers, body)
    return response.status_code, body


# Reads of the read models by different paths: Litestar's route, the fast path (jobs_fastpath),
# an SSE stream's row read (sharedreads), an HTML page.
READ_PATHS = (
    "/api/jobs/before",
    "/api/jobs",
    "/api/jobs/before/logs",
    "/api/jobs/before/stream",
    "/jobs/before",
)


async def read_many(system: System, count: int) -> list[tuple[int, dict[str, Any]]]:
    return await asyncio.gather(
        *(read_job(system, READ_PATHS[i % len(READ_PATHS)]) for i in range(count))
    )


def assert_no_connection_held(pool: ReadPool) -> None:
    """Every connection the pool has is back in it (none wedged in use) and open."""
    holders = pool.pool._holders
    assert pool.pool.get_idle_size() == pool.pool.get_size(), [h._in_use for h in holders]
    assert all(h._con is None or not h._con.is_closed() for h in holders)


async def served_again(system: System) -> None:
    """Until the API serves the job again, on its own (nothing restarted)."""
    last = None
    try:
        async with asyncio.timeout(30):
            while (last := await read_job(system))[0] != 200:  # noqa: ASYNC110 (only HTTP)
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not served again 30 s after the fault; last answer {last}") from None


def assert_unavailable(status: int, body: dict[str, Any]) -> None:
    assert status == 503, body
    assert body["error"]["code"] == "READ_MODELS_UNAVAILABLE"
    assert body["error"]["message"]


def assert_timed_out(status: int, body: dict[str, Any]) -> None:
    assert status == 503, body
    assert body["error"]["code"] == "READ_MODELS_TIMEOUT"
    assert body["error"]["message"]


def assert_frozen_answers(answers: list[tuple[int, dict[str, Any]]]) -> None:
    """``read_many``'s answers with Postgres frozen: 503 READ_MODELS_TIMEOUT for every read but
    the job's stream, which opens (200) from the job's JobRequested in NATS once its row's read
    passed the stream's bound (session 33: tests/test_streams_postgres_frozen.py)."""
    for path, (status, body) in zip(itertools.cycle(READ_PATHS), answers, strict=False):
        if path.endswith("/stream"):
            assert status == 200, (path, body)
        else:
            assert_timed_out(status, body)


async def test_postgres_stopped_reads_answer_503_with_a_code_then_recover(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """Before the fix: 500 INTERNAL_ERROR (the refused connection reached the catch-all). Stopped,
    not killed: a kill loses the test server's last commits (synchronous_commit off), which is
    the projector's matter (test_projector_outage.py), not the API's."""
    await asyncio.to_thread(own_postgres.stop)
    assert_unavailable(*await read_job(system))
    await asyncio.to_thread(own_postgres.start)
    await served_again(system)


async def test_requests_refused_while_postgres_is_stopped_log_one_line_with_a_count(
    system: System, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty reads refused while Postgres is stopped: one "read models unavailable" line, not
    twenty (the operator's audit, s30: 45 lines in a 37 s restart); the lines left out are
    counted into the next one after the interval."""
    throttle = LogThrottle(errors.REFUSAL_LOG_INTERVAL)  # fresh: no earlier test's line counts
    monkeypatch.setattr(errors, "POSTGRES_AWAY_LOG", throttle)
    await asyncio.to_thread(own_postgres.stop)
    try:
        with capture_logs() as logs:
            for _ in range(20):
                assert_unavailable(*await read_job(system))
            throttle.last_logged -= errors.REFUSAL_LOG_INTERVAL  # the interval has passed
            assert_unavailable(*await read_job(system))
    finally:
        await asyncio.to_thread(own_postgres.start)
    lines = [line for line in logs if line["event"] == "read models unavailable"]
    assert [line.get("since_last") for line in lines] == [None, 19], lines
    await served_again(system)


async def test_postgres_frozen_just_shorter_than_the_deadline_is_waited_out(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """A freeze shorter than the read deadline: the reads wait for Postgres and answer 200
    (guards the deadline from answering early; passes without it too)."""
    with frozen_postgres(own_postgres):
        reading = asyncio.create_task(read_many(system, len(READ_PATHS)))
        await asyncio.sleep(DEADLINE - 0.5)  # the fault's length: how long Postgres stays frozen
    for status, body in await reading:
        assert status == 200, body


async def test_postgres_frozen_longer_than_the_deadline_answers_every_reader_in_time(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """More readers than the pool's connections, Postgres frozen past the deadline: each is
    answered 503 READ_MODELS_TIMEOUT while Postgres is still frozen (before the fix: each
    waited for the thaw). After the thaw all answer 200, with no connection left wedged."""
    pool = read_pool_of(system)
    assert pool.pool.get_max_size() == POOL_SIZE < READERS
    frozen = True
    answered_frozen: list[bool] = []

    async def read_noting_the_freeze(path: str) -> tuple[int, dict[str, Any]]:
        answer = await read_job(system, path)
        answered_frozen.append(frozen)
        return answer

    with frozen_postgres(own_postgres):
        readers = asyncio.gather(
            *(read_noting_the_freeze(READ_PATHS[i % len(READ_PATHS)]) for i in range(READERS))
        )
        # Thawed once every reader is answered; a reader that waits for the thaw is given it
        # after GIVE_UP_SECONDS (no bound on how fast they answer: only whether it was frozen).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(readers), GIVE_UP_SECONDS)
        frozen = False
    answers = await readers
    waited = answered_frozen.count(False)
    assert waited == 0, f"{waited} of {READERS} readers were answered only after the thaw"
    assert_frozen_answers(answers)
    await served_again(system)
    for status, body in await read_many(system, READERS):
        assert status == 200, body
    assert_no_connection_held(pool)


async def test_health_answers_within_its_own_bound_while_readers_wait(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """Postgres frozen and every pooled connection taken by readers: ``GET /health`` says so
    (503, POSTGRES_TIMEOUT) after its own short bound, while the readers still wait for
    theirs (before the fix it waited for the thaw)."""
    with frozen_postgres(own_postgres):
        readers = asyncio.create_task(read_many(system, READERS))
        await asyncio.sleep(0.2)  # the readers hold or wait for every connection
        async with system.client() as client:
            response = await client.get("/health")
        assert not readers.done(), "health answered only after the readers' deadline"
        body = response.json()
        assert response.status_code == 503, body
        assert body["status"] == "unavailable"
        assert body["postgres"] is False
        codes = [p["code"] for p in body["problems"]]
        assert "POSTGRES_TIMEOUT" in codes, body  # (and NO_RUNNER: this system has none)
        assert "POSTGRES_UNREACHABLE" not in codes, body
        assert_frozen_answers(await readers)
    await served_again(system)
    async with system.client() as client:
        assert (await client.get("/health")).json()["postgres"] is True


async def test_a_slow_but_working_read_is_not_refused(settings: Settings) -> None:
    """A read that takes most of the deadline (Postgres working, not frozen) is answered; one
    past it is refused, its connection terminated, and the pool serves the next read."""
    pool = await read_pool(settings.database_url, 1.5)
    try:
        assert await pool.fetchval("SELECT 1 FROM pg_sleep(1.0)") == 1
        with pytest.raises(ReadModelsTimeout):
            await pool.fetchval("SELECT pg_sleep(3)")
        assert await pool.fetchval("SELECT 1") == 1
        assert_no_connection_held(pool)
    finally:
        await pool.close()


async def test_a_read_on_a_frozen_postgres_ends_at_the_deadline_and_terminates_its_connection(
    own_postgres: EmbeddedPostgres,
) -> None:
    """The connection in use when the deadline passes is terminated, not cancelled (asyncpg's
    cancel waits on the frozen server): the read ends while Postgres is frozen, and after the
    thaw the pool reads again without a wedged connection."""
    pool = await read_pool(own_postgres.url, 1.0)
    try:
        assert await pool.fetchval("SELECT 1") == 1  # a connection open before the freeze
        with frozen_postgres(own_postgres):
            async with asyncio.timeout(5):  # answered while frozen, not after
                with pytest.raises(ReadModelsTimeout):
                    await pool.fetchval("SELECT 1")
            assert_no_connection_held(pool)
        assert await pool.fetchval("SELECT 1") == 1
        assert_no_connection_held(pool)
    finally:
        await pool.close()


async def test_a_timeout_of_the_block_s_own_after_the_deadline_is_still_the_deadline(
    settings: Settings,
) -> None:
    """A read whose block raises TimeoutError once our deadline has passed (code of its own that
    turns the cancel into a timeout, as a library's own timeout may) gets ReadModelsTimeout, a
    503 READ_MODELS_TIMEOUT, not a bare TimeoutError (a 500); a TimeoutError raised before our
    deadline stays the block's own. (Re-review, s20.)"""

    async def timed_out_on_its_own(pool: ReadPool, past_the_deadline: bool) -> None:
        async with pool.acquire() as conn:
            if past_the_deadline:
                try:
                    await conn.fetchval("SELECT pg_sleep(2)")
                except asyncio.CancelledError:
                    raise TimeoutError("the block's own") from None
            raise TimeoutError("the block's own")

    pool = await read_pool(settings.database_url, 0.5)
    try:
        with pytest.raises(ReadModelsTimeout):
            await timed_out_on_its_own(pool, past_the_deadline=True)
        with pytest.raises(TimeoutError, match="the block's own"):
            await timed_out_on_its_own(pool, past_the_deadline=False)
        assert await pool.fetchval("SELECT 1") == 1
        assert_no_connection_held(pool)
    finally:
        await pool.close()


async def test_health_is_not_unavailable_while_postgres_answers_slow_legitimate_reads(
    system: System,
) -> None:
    """Postgres working, every pooled connection busy with a legitimate 2 s read (within the
    read deadline): health reads on its own connection, so it says ok on Postgres, not 503
    POSTGRES_TIMEOUT (a load balancer would pull a working instance). (Review, s20.)"""
    pool = read_pool_of(system)
    slow = [asyncio.ensure_future(pool.fetchval("SELECT pg_sleep(2)")) for _ in range(POOL_SIZE)]
    await asyncio.sleep(0.3)
    async with system.client() as client:
        response = await client.get("/health")
    await asyncio.gather(*slow)
    body = response.json()
    assert body["postgres"] is True, body
    assert "POSTGRES_TIMEOUT" not in [p["code"] for p in body["problems"]], body


async def test_a_reader_cancelled_mid_query_keeps_its_connection(settings: Settings) -> None:
    """Postgres answering, a client gone mid-query (a viewer leaving a stream): the connection
    goes back (asyncpg cancels the query) instead of being terminated, which opened a new
    backend per departing viewer. (Review, s20.)"""
    pool = await read_pool(settings.database_url, 60.0)
    try:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        task = asyncio.ensure_future(pool.fetchval("SELECT pg_sleep(0.5)"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await pool.fetchval("SELECT pg_backend_pid()") == before, "terminated"
        assert_no_connection_held(pool)
    finally:
        await pool.close()


async def test_a_reader_cancelled_on_a_frozen_postgres_ends_by_its_deadline(
    own_postgres: EmbeddedPostgres,
) -> None:
    """Postgres frozen and the client gone: the release that follows the cancel waits at most
    what is left of the deadline, then the connection is terminated; a second cancel returns at
    once (the release is shielded). After the thaw the pool reads, no connection held."""
    pool = await read_pool(own_postgres.url, 1.0)
    try:
        assert await pool.fetchval("SELECT 1") == 1
        with frozen_postgres(own_postgres):
            async with asyncio.timeout(3):  # ended while frozen, not at the thaw
                task = asyncio.ensure_future(pool.fetchval("SELECT 1"))
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                again = asyncio.ensure_future(pool.fetchval("SELECT 1"))
                await asyncio.sleep(0.2)
                again.cancel()
                await asyncio.sleep(0)
                again.cancel()  # cancelled twice: returns without waiting for the release
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(again), 0.3)
            await asyncio.sleep(1.0)  # the shielded release runs out and terminates
            assert_no_connection_held(pool)
        assert await pool.fetchval("SELECT 1") == 1
        assert_no_connection_held(pool)
    finally:
        await pool.close()


async def test_a_cancel_landing_just_after_the_release_is_still_a_cancel(
    settings: Settings,
) -> None:
    """The cancel arrives after asyncpg's release has handed the connection back, before the
    reader resumes: the reader ends with CancelledError, not InterfaceError from terminating a
    detached proxy (the pool may have handed its connection on). (Review, s20.)"""
    rp = await read_pool(settings.database_url, 60.0)
    real = rp.pool

    class CancelledAfterRelease:
        """The real pool; the reader's cancel lands right after a release completes."""

        async def acquire(self) -> Any:
            return await real.acquire()

        async def release(self, conn: Any, *, timeout: float | None = None) -> None:
            await real.release(conn, timeout=timeout)  # the proxy is detached now
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(0)

    rp.pool = CancelledAfterRelease()
    try:
        with pytest.raises(asyncio.CancelledError):
            await rp.fetchval("SELECT 1")
    finally:
        await real.close()


async def test_readers_cancelled_at_random_moments_end_in_cancel_or_answer(
    settings: Settings,
) -> None:
    """Clients leaving at any moment: each read ends in CancelledError or its answer, never
    an InterfaceError from terminating a released proxy. (Review, s20.)"""
    pool = await read_pool(settings.database_url, 60.0)
    rng = random.Random(7)
    odd: list[BaseException] = []
    try:
        for _ in range(3000):
            task = asyncio.ensure_future(pool.fetchval("SELECT 1"))
            for _ in range(rng.randint(0, 30)):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except BaseException as exc:
                odd.append(exc)
        assert not odd, odd[:3]
    finally:
        await pool.close()


async def test_health_reads_postgres_within_one_bound_and_an_unread_count_is_unknown(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """Postgres answers the checkpoint but not the set-aside count (its table locked by another
    session): health answers within its one bound over all its reads, POSTGRES_TIMEOUT, and
    the count is unknown (None), not 0 (which says nothing was set aside). (Review, s20.)"""
    locker = await asyncpg.connect(own_postgres.url)
    try:
        async with locker.transaction():
            await locker.execute(f"LOCK TABLE {READ_SCHEMA}.projector_failures")
            async with asyncio.timeout(HEALTH_DEADLINE + 1.0), system.client() as client:
                response = await client.get("/health")
        body = response.json()
        assert response.status_code == 503, body
        assert "POSTGRES_TIMEOUT" in [p["code"] for p in body["problems"]], body
        assert body["set_aside"]["count"] is None, body
    finally:
        await locker.close()
    async with system.client() as client:
        body = (await client.get("/health")).json()
    assert body["postgres"] is True, body
    assert body["set_aside"]["count"] == 0, body


@contextlib.asynccontextmanager
async def in_a_rebuild(
    own_postgres: EmbeddedPostgres, own_nats: EmbeddedNats
) -> AsyncIterator[tuple[ReadModelGate, ReadPool, Any]]:
    """The gate of an API that found no current read models (a rebuild: a checkpoint, no version
    table), its read pool, and what ``health._postgres`` needs of the API's context."""
    setup = await asyncpg.connect(own_postgres.url)
    try:
        await setup.execute(f"CREATE SCHEMA IF NOT EXISTS {READ_SCHEMA}")
        await setup.execute(f"CREATE TABLE {READ_SCHEMA}.checkpoint (id int, last_seq bigint)")
        await setup.execute(f"INSERT INTO {READ_SCHEMA}.checkpoint VALUES (1, 0)")
    finally:
        await setup.close()
    nc = await nats.connect(own_nats.url)
    probe = await health_pool(own_postgres.url, HEALTH_DEADLINE)
    pool = await read_pool(own_postgres.url, 60.0)
    try:
        gate = ReadModelGate(pool, nc.jetstream(), Names("rebuild"), stuck_seconds=10.0)
        assert not (await gate.check()).current  # as the API's start() finds it
        ctx = types.SimpleNamespace(
            settings=types.SimpleNamespace(health_postgres_timeout_seconds=HEALTH_DEADLINE),
            health_pool=probe,
            readmodels=gate,
        )
        yield gate, pool, ctx
    finally:
        await nc.close()
        await probe.close()
        await pool.close()


async def test_health_in_a_rebuild_does_not_call_a_paused_nats_a_frozen_postgres(
    own_postgres: EmbeddedPostgres, own_nats: EmbeddedNats
) -> None:
    """In a rebuild health looks at the read models' version again within its Postgres bound;
    NATS paused must not make that look time out (POSTGRES_TIMEOUT while Postgres answers): the
    stream's end is read outside the bound. (Re-review, s20.)"""
    async with in_a_rebuild(own_postgres, own_nats) as (_, _, ctx):
        assert (await health._postgres(ctx)).problem is None  # NATS answering
        assert own_nats.proc is not None
        with frozen(own_nats.proc.pid):
            facts = await health._postgres(ctx)
    assert facts.problem is None, facts.problem
    assert facts.readmodels.found == 0  # a checkpoint, no version table: the oldest
    assert not facts.readmodels.current


async def test_health_in_a_rebuild_does_not_wait_on_a_look_queued_for_a_busy_read_pool(
    own_postgres: EmbeddedPostgres, own_nats: EmbeddedNats
) -> None:
    """Every pooled connection busy with a legitimate 2 s read, and a request's look at the
    version (the gate's check, on the read pool) holding the gate's lock while it waits for
    one: health, on its own connection, must not wait on that lock. (Re-review, s20.)"""
    async with in_a_rebuild(own_postgres, own_nats) as (gate, pool, ctx):
        slow = [asyncio.ensure_future(pool.fetchval("SELECT pg_sleep(2)")) for _ in range(10)]
        await asyncio.sleep(0.3)
        looking = asyncio.ensure_future(gate.check())  # a request during the rebuild
        await asyncio.sleep(0.05)
        facts = await health._postgres(ctx)
        await asyncio.gather(*slow, looking)
    assert facts.problem is None, facts.problem
    assert not facts.readmodels.current


async def test_health_s_own_connection_on_a_frozen_postgres_is_bounded_and_reads_again(
    own_postgres: EmbeddedPostgres,
) -> None:
    """Health's pool of one: Postgres frozen longer than health's bound → ReadModelsTimeout
    within it, the connection not held; frozen just shorter → answered; after the thaw it reads
    again. (From the re-review, s20; a guard: passes before its fixes too.)"""
    probe = await health_pool(own_postgres.url, HEALTH_DEADLINE)

    async def one() -> Any:
        async with probe.acquire(HEALTH_DEADLINE) as conn:
            return await conn.fetchval("SELECT 1")

    try:
        with frozen_postgres(own_postgres):
            async with asyncio.timeout(HEALTH_DEADLINE + 1.0):  # answered while frozen
                with pytest.raises(ReadModelsTimeout):
                    await one()
            assert_no_connection_held(probe)
        with frozen_postgres(own_postgres):  # just shorter than the bound: answered
            task = asyncio.ensure_future(one())
            await asyncio.sleep(HEALTH_DEADLINE / 2)
        assert await task == 1
        assert_no_connection_held(probe)
    finally:
        await probe.close()


async def test_every_way_a_read_ends_returns_its_connection(settings: Settings) -> None:
    """A query error, a connection killed mid-query, a cancel while waiting for a connection,
    a caller's cancel mid-query: each leaves no connection held. (From the re-review, s20; a
    guard: passes before its fixes too.)"""
    pool = await read_pool(settings.database_url, 60.0)
    killer = await asyncpg.connect(settings.database_url)

    async def killed_mid_query() -> None:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
            await conn.fetchval("SELECT pg_sleep(1)")

    async def cancelled(read: Any, after: float) -> None:
        task = asyncio.ensure_future(read)
        await asyncio.sleep(after)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await pool.fetchval("SELECT 1/0")
        assert_no_connection_held(pool)
        # asyncpg answers a backend killed under it in several ways; the read turns the
        # client-side ones (InternalClientError "another operation is in progress") into
        # ReadModelsLost (session 21). What matters here is the connection comes back.
        killed = (asyncpg.PostgresError, ReadModelsLost)
        with pytest.raises(killed):
            await killed_mid_query()
        assert_no_connection_held(pool)
        busy = [asyncio.ensure_future(pool.fetchval("SELECT pg_sleep(0.5)")) for _ in range(10)]
        await asyncio.sleep(0.1)
        await cancelled(pool.fetchval("SELECT 1"), after=0.05)  # waiting for a connection
        await asyncio.gather(*busy)
        assert_no_connection_held(pool)
        await cancelled(pool.fetchval("SELECT pg_sleep(5)"), after=0.2)  # mid-query
        assert_no_connection_held(pool)
    finally:
        await killer.close()
        await pool.close()


async def test_a_backend_terminated_at_any_point_of_a_read_is_postgres_away(
    settings: Settings,
) -> None:
    """``pg_terminate_backend`` of a read's backend while the connection is idle (the next
    query then meets the FATAL message before the socket's end) and at random moments of a
    query: every failure is one of the "Postgres away" errors the API answers with 503 (never
    asyncpg's InternalClientError or InterfaceError, a 500), and the pool holds nothing after.
    Before the fix (session 21): InternalClientError ("another operation is in progress") in
    about half the idle kills, InterfaceError ("connection has been released"), and a release
    raising InternalClientError ("called on a free connection holder")."""
    pool = await read_pool(settings.database_url, 60.0)
    killer = await asyncpg.connect(settings.database_url)
    # What the API answers 503 READ_MODELS_UNAVAILABLE (ReadModelsLost among them): no wider.
    away = errors.POSTGRES_AWAY
    failures: list[BaseException] = []

    async def killed(mode: str) -> None:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            if mode == "idle":
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
                await asyncio.sleep(random.choice([0, 0, 0.0005, 0.002]))
                await conn.fetch("SELECT 1")
            else:
                query = asyncio.ensure_future(conn.fetch("SELECT generate_series(1, 200000)"))
                await asyncio.sleep(random.uniform(0, 0.03))
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
                await query

    try:
        for _ in range(60):
            for mode in ("idle", "mid"):
                try:
                    await killed(mode)
                except Exception as exc:
                    failures.append(exc)
        wrong = [repr(exc) for exc in failures if not isinstance(exc, away)]
        assert not wrong, wrong
        assert len(failures) >= 60  # every idle kill failed its read, at least
        assert await pool.fetchval("SELECT 1") == 1
        assert_no_connection_held(pool)
    finally:
        await killer.close()
        await pool.close()


async def test_api_reads_whose_backends_are_terminated_answer_503_never_500(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """Readers on every read path while the API's pooled backends are terminated over and
    over: each answer is 200 or 503 READ_MODELS_UNAVAILABLE, none a 500; served after."""
    pool = read_pool_of(system)
    killer = await asyncpg.connect(own_postgres.url)
    answers: list[tuple[int, dict[str, Any]]] = []
    stop = asyncio.Event()

    async def kill_the_api_s_backends() -> None:
        while not stop.is_set():
            pids = [conn.get_server_pid() for conn in pooled_connections(pool.pool)]
            for pid in pids:
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(random.uniform(0, 0.01))

    async def reader(i: int) -> None:
        for n in range(40):
            answers.append(await read_job(system, READ_PATHS[(i + n) % len(READ_PATHS)]))

    killing = asyncio.ensure_future(kill_the_api_s_backends())
    try:
        await asyncio.gather(*(reader(i) for i in range(5)))
    finally:
        stop.set()
        await killing
        await killer.close()
    wrong = [(status, body) for status, body in answers if status not in (200, 503)]
    assert not wrong, wrong
    for status, body in answers:
        if status == 503:
            assert_unavailable(status, body)
    assert any(status == 503 for status, _ in answers)  # the kills landed under reads
    await served_again(system)


LONG_DEADLINE = 30.0  # a read's deadline the next tests must not wait out
GRACE = 1.0  # the cancel grace they set


async def test_a_single_cancel_on_a_frozen_postgres_frees_the_read_within_the_grace(
    own_postgres: EmbeddedPostgres,
) -> None:
    """A caller cancelled once (a client gone) while Postgres is frozen: the read ends and its
    connection is terminated while Postgres is still frozen, long before the read's deadline
    (before session 21 it waited out the rest of the deadline). After the thaw the pool
    reads again."""
    base = await read_pool(own_postgres.url, LONG_DEADLINE)
    pool = ReadPool(base.pool, LONG_DEADLINE, cancel_grace_seconds=GRACE)
    try:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        with frozen_postgres(own_postgres):
            task = asyncio.ensure_future(pool.fetchval("SELECT 1"))
            await asyncio.sleep(1.0)  # the client leaves after 1 s
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=LONG_DEADLINE / 3)
            assert done, "the cancelled read still waits"
            assert task.cancelled()
            assert_no_connection_held(pool)  # terminated, not waiting in a release
            assert all(h._con is None for h in pool.pool._holders)
        assert await pool.fetchval("SELECT pg_backend_pid()") != before  # a new backend
        assert_no_connection_held(pool)
    finally:
        await pool.close()


async def test_a_cancel_answered_within_the_grace_keeps_the_connection(
    own_postgres: EmbeddedPostgres,
) -> None:
    """Postgres frozen for less than the grace after a caller's cancel: asyncpg's cancel is
    answered after the thaw and the connection (its backend) is kept."""
    base = await read_pool(own_postgres.url, LONG_DEADLINE)
    pool = ReadPool(base.pool, LONG_DEADLINE, cancel_grace_seconds=GRACE)
    try:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        task = asyncio.ensure_future(pool.fetchval("SELECT pg_sleep(10)"))
        await asyncio.sleep(0.2)
        with frozen_postgres(own_postgres):
            task.cancel()
            await asyncio.sleep(GRACE * 0.3)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await pool.fetchval("SELECT pg_backend_pid()") == before, "terminated"
        assert_no_connection_held(pool)
    finally:
        await pool.close()


async def test_a_statement_cancelled_by_postgres_keeps_the_connection(settings: Settings) -> None:
    """A read's statement cancelled on Postgres's side (pg_cancel_backend, as statement_timeout
    does): QueryCanceledError as it is, never ReadModelsLost, and the live connection goes back
    to the pool instead of being terminated."""
    pool = await read_pool(settings.database_url, 60.0)
    canceller = await asyncpg.connect(settings.database_url)
    try:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        # Long, so that however late the look finds it the statement still runs: the cancel
        # ends it (below the pool's 60 s, so that a cancel that did not fails as such).
        task = asyncio.ensure_future(pool.fetchval("SELECT pg_sleep(50)"))
        await until_backends(
            canceller, query_like="SELECT pg_sleep(50)", active=True, unless_ended=task
        )
        assert await canceller.fetchval("SELECT pg_cancel_backend($1)", before)
        with pytest.raises(asyncpg.QueryCanceledError):
            await task
        assert await pool.fetchval("SELECT pg_backend_pid()") == before, "terminated"
        assert_no_connection_held(pool)
    finally:
        await canceller.close()
        await pool.close()
