"""The projector while its Postgres is frozen (SIGSTOP of every Postgres process) or killed with a
``COPY`` of lines in flight: once Postgres is back the projector catches up on its own, no line
lost or applied twice, and the read models equal a fresh replay of the stream."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
import structlog

from jobrunner.common import readmodelversion
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.projector.replaylock import REPLAY_LOCK, connect_lock_holder
from tests import netpartition, servers
from tests.history_support import job_events, logged_job, publish, wait_projected
from tests.netpartition import CuttableLink, cuttable_link, vanish_and_return
from tests.readmodel_support import replay_differences
from tests.system import System
from tests.tools.backend_activity import backends, until_backends
from tests.tools.postgres_processes import frozen_postgres

STUCK = 2.0  # projector_stuck_seconds in these tests: the freezes go just under and over it
JOBS = 6
LINES = 20_000  # per job, 500 a message: a flood the projector copies in several transactions


@pytest.fixture
async def forgetful_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """Loses its last seconds of acknowledged commits when killed (servers.FORGETFUL)."""
    async with servers.own_postgres(
        "jobrunner-test-projector-forgetful-", **servers.FORGETFUL
    ) as server:
        yield server


async def copy_in_flight(url: str, timeout: float = 30.0) -> None:
    """Until a backend is running the projector's ``COPY`` of lines."""
    conn = await asyncpg.connect(url)
    try:
        async with asyncio.timeout(timeout):
            while not await conn.fetchval(  # noqa: ASYNC110 (nothing to wait on but Postgres)
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query ILIKE 'COPY%' AND pid <> pg_backend_pid()"
            ):
                await asyncio.sleep(0.005)
    finally:
        await conn.close()


async def flood(settings: Settings, label: str) -> asyncio.Task[int]:
    """Publish ``JOBS`` jobs of ``LINES`` lines in the background; the task returns the last
    stream sequence."""

    async def publish_all() -> int:
        last = 0
        for n in range(JOBS):
            last = await publish(settings, logged_job(f"{label}{n}", LINES))
        return last

    return asyncio.create_task(publish_all())


async def stored_lines(url: str) -> list[tuple[str, int, int, int]]:
    """Per job: its id, lines stored, distinct sequence numbers, the highest one."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT job_id, count(*), count(DISTINCT seq), max(seq) FROM readmodel.log_lines "
            "GROUP BY job_id ORDER BY job_id"
        )
    finally:
        await conn.close()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def check_caught_up(settings: Settings, system: System, last: int) -> None:
    await wait_projected(settings, last, timeout=90)
    assert not system._tasks["projector"].done(), "the projector gave up"
    await system.stop()
    expected = [(f"j{n}", LINES, LINES, LINES) for n in range(JOBS)]
    assert await stored_lines(settings.database_url) == expected
    assert await replay_differences(settings) == {}


@pytest.mark.parametrize(
    "frozen", [STUCK / 4, STUCK * 1.5, STUCK * 3], ids=["shorter", "longer", "past-dead"]
)
async def test_postgres_frozen_under_a_flood_is_waited_out(
    settings: Settings, own_postgres: EmbeddedPostgres, frozen: float
) -> None:
    """Every Postgres process SIGSTOPped while the projector copies lines, for less and more
    than ``projector_stuck_seconds`` and than ``projector_postgres_dead_seconds`` (STUCK * 2
    here): after the thaw the projector goes on by itself."""
    settings = msgspec.structs.replace(
        settings,
        database_url=own_postgres.url,
        projector_stuck_seconds=STUCK,
        projector_postgres_dead_seconds=STUCK * 2,
    )
    system = System(settings)
    await system.start_projector()
    try:
        publishing = await flood(settings, "j")
        await copy_in_flight(settings.database_url)
        with frozen_postgres(own_postgres):
            await asyncio.sleep(frozen)
        await check_caught_up(settings, system, await publishing)
    finally:
        await system.stop()


async def kill_with_a_copy_in_flight(settings: Settings, postgres: EmbeddedPostgres) -> None:
    """Postgres SIGKILLed (postmaster and children) while the projector's COPY of lines runs,
    then started again."""
    settings = msgspec.structs.replace(settings, database_url=postgres.url)
    system = System(settings)
    await system.start_projector()
    try:
        publishing = await flood(settings, "j")
        await copy_in_flight(settings.database_url)
        await asyncio.to_thread(postgres.kill)
        await asyncio.to_thread(postgres.start)
        await check_caught_up(settings, system, await publishing)
    finally:
        await system.stop()


async def test_postgres_killed_with_a_copy_in_flight_loses_no_line(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    await kill_with_a_copy_in_flight(settings, own_postgres)


async def test_forgetful_postgres_killed_with_a_copy_in_flight_loses_no_line(
    settings: Settings, forgetful_postgres: EmbeddedPostgres
) -> None:
    """The same with a Postgres that comes back without its last acknowledged commits."""
    await kill_with_a_copy_in_flight(settings, forgetful_postgres)


async def test_two_projectors_at_once_apply_each_event_once(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    """The README says one projector per installation; a second one started by mistake (at the
    same moment, during a flood) must not store anything twice or skip anything."""
    from jobrunner.services.projector.service import run_projector

    settings = msgspec.structs.replace(settings, database_url=own_postgres.url)
    system = System(settings)
    await system.start_projector()
    await system._start("projector2", run_projector)
    try:
        publishing = await flood(settings, "j")
        await check_caught_up(settings, system, await publishing)
    finally:
        await system.stop()


DEAD = 2.0  # projector_postgres_dead_seconds in the partition tests


@pytest.fixture
async def postgres_behind_a_link() -> AsyncIterator[tuple[EmbeddedPostgres, CuttableLink]]:
    """A Postgres of its own, reached through a relay across a link that can be cut."""
    if reason := netpartition.unavailable():
        pytest.skip(reason)
    postgres_port, relay_port = free_port(), free_port()
    with (
        cuttable_link(postgres_port, relay_port) as link,
        scratch_dir("jobrunner-test-link-") as root,
    ):
        server = EmbeddedPostgres(
            root / "data",
            port=postgres_port,
            settings={
                **servers.TEST_POSTGRES_SETTINGS,
                "listen_addresses": f"127.0.0.1,{link.host_address}",
            },
        )
        await asyncio.to_thread(server.start)
        try:
            # The relay connects from the link's far end: let it in, as 127.0.0.1 is.
            with (server.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {link.relay_address}/32 scram-sha-256\n")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            yield server, link
        finally:
            await asyncio.to_thread(server.stop)


def through_the_link(settings: Settings, server: EmbeddedPostgres, link: CuttableLink) -> Settings:
    url = server.url.replace(f"127.0.0.1:{server.port}", f"{link.relay_address}:{link.relay_port}")
    return msgspec.structs.replace(settings, database_url=url, projector_postgres_dead_seconds=DEAD)


async def count_jobs(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM readmodel.jobs"))
    finally:
        await conn.close()


async def test_postgres_host_gone_silently_is_given_up_and_the_new_one_used(
    settings: Settings, postgres_behind_a_link: tuple[EmbeddedPostgres, CuttableLink]
) -> None:
    """The projector waits for an answer (its query acknowledged: Postgres frozen) when the
    server's host vanishes without a word and a new one answers at the same address. Without a
    keepalive the projector waited for ever on the dead connection; now it gives it up after
    about ``projector_postgres_dead_seconds`` and applies the batch on a new one."""
    server, link = postgres_behind_a_link
    settings = through_the_link(settings, server, link)
    system = System(settings)
    await system.start_projector()
    try:
        await wait_projected(settings, await publish(settings, job_events("before")))
        with frozen_postgres(server):
            last = await publish(settings, job_events("during"))
            await asyncio.sleep(0.5)  # the projector's batch is sent and acknowledged
            await asyncio.to_thread(vanish_and_return, link)
        await wait_projected(settings, last, timeout=DEAD * 8)
        assert await count_jobs(server.url) == 2
        await system.stop()
        assert await replay_differences(settings) == {}
    finally:
        await system.stop()


@pytest.mark.parametrize("cut", [DEAD / 2, DEAD * 2], ids=["shorter", "longer"])
async def test_a_link_cut_for_a_while_under_a_flood_loses_nothing(
    settings: Settings,
    postgres_behind_a_link: tuple[EmbeddedPostgres, CuttableLink],
    cut: float,
) -> None:
    """The link cut (every packet dropped) during a flood, for less and more than
    ``projector_postgres_dead_seconds``, then healed: shorter, the connection carries on;
    longer, it is given up and the batch applied on a new one. Either way every line once."""
    server, link = postgres_behind_a_link
    settings = through_the_link(settings, server, link)
    system = System(settings)
    await system.start_projector()
    try:
        publishing = await flood(settings, "j")
        await copy_in_flight(server.url)
        await asyncio.to_thread(link.cut)
        try:
            await asyncio.sleep(cut)
        finally:
            await asyncio.to_thread(link.heal)
        await check_caught_up(settings, system, await publishing)
    finally:
        await system.stop()


async def test_review_link_cut_while_the_backend_waits_for_the_projector(
    settings: Settings, postgres_behind_a_link: tuple[EmbeddedPostgres, CuttableLink]
) -> None:
    """Review: the link is cut while the projector's backend, inside the batch's transaction,
    waits for the projector's next message (the projector's process paused for a moment: its
    kernel has acknowledged every answer). The projector gives the connection up after DEAD; the
    link heals; the orphan backend still holds the checkpoint row lock (Postgres sets no
    keepalive of its own), so the batch on the new connection waits for it for ever."""
    server, link = postgres_behind_a_link
    settings = through_the_link(settings, server, link)
    system = System(settings)
    await system.start_projector()
    try:
        publishing = await flood(settings, "j")
        await copy_in_flight(server.url)
        time.sleep(0.5)  # noqa: ASYNC251 the projector's loop paused: answers land in its kernel, acked
        link.cut()
        await asyncio.sleep(DEAD * 2)
        await asyncio.to_thread(link.heal)
        last = await publishing
        await wait_projected(settings, last, timeout=30)
    finally:
        await system.stop()


@pytest.mark.parametrize("held", [DEAD * 2 * 0.5, DEAD * 2 * 2], ids=["shorter", "longer"])
async def test_a_checkpoint_lock_held_elsewhere_is_waited_on_with_a_bound(
    settings: Settings, own_postgres: EmbeddedPostgres, held: float
) -> None:
    """Another backend (here a plain client's open transaction, as a backend whose client is
    gone would be) holds the checkpoint row, for less and more than the projector's lock wait
    (twice ``projector_postgres_dead_seconds``). Shorter: the batch waits and is applied, no
    error. Longer: the wait ends, the projector says who holds the lock, can be stopped while
    it waits, and once the lock is free applies the batch."""
    settings = msgspec.structs.replace(
        settings, database_url=own_postgres.url, projector_postgres_dead_seconds=DEAD
    )
    system = System(settings)
    await system.start_projector()
    try:
        await wait_projected(settings, await publish(settings, job_events("before")))
        holder = await asyncpg.connect(own_postgres.url)
        try:
            holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
            with structlog.testing.capture_logs() as logs:
                async with holder.transaction():
                    await holder.execute("SELECT * FROM readmodel.checkpoint FOR UPDATE")
                    last = await publish(settings, job_events("during"))
                    await asyncio.sleep(held)
                    assert await count_jobs(own_postgres.url) == 1
                await wait_projected(settings, last, timeout=DEAD * 8)
        finally:
            await holder.close()
        waits = [e for e in logs if e["event"].startswith("projector waited too long on a lock")]
        if held < DEAD * 2:
            assert waits == []
        else:
            assert waits
            assert waits[0]["holders"][0]["pid"] == holder_pid
        assert await count_jobs(own_postgres.url) == 2
    finally:
        await system.stop()


async def test_the_projector_stops_while_a_checkpoint_lock_is_held_elsewhere(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    """A lock held for good by another backend: the projector still stops when asked."""
    settings = msgspec.structs.replace(
        settings, database_url=own_postgres.url, projector_postgres_dead_seconds=DEAD
    )
    system = System(settings)
    await system.start_projector()
    holder = await asyncpg.connect(own_postgres.url)
    try:
        await wait_projected(settings, await publish(settings, job_events("before")))
        async with holder.transaction():
            await holder.execute("SELECT * FROM readmodel.checkpoint FOR UPDATE")
            await publish(settings, job_events("during"))
            await asyncio.sleep(DEAD * 2 + 1)
            await asyncio.wait_for(system.stop_service("projector"), DEAD * 4)
    finally:
        await holder.close()
        await system.stop()


LONG_DEAD = 30.0  # projector_postgres_dead_seconds: a lock wait of 60 s, the default's


async def test_a_stop_ends_the_projector_while_a_statement_waits_on_a_lock(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    """The projector's batch waits on the checkpoint row another backend holds (a 60 s lock
    wait); a stop ends it while the lock is still held (before session 21 the stop waited for
    the lock wait to run out). The next projector, once the lock is free, applies the batch
    from the checkpoint: every event once."""
    settings = msgspec.structs.replace(
        settings, database_url=own_postgres.url, projector_postgres_dead_seconds=LONG_DEAD
    )
    system = System(settings)
    await system.start_projector()
    holder = await asyncpg.connect(own_postgres.url)
    try:
        await wait_projected(settings, await publish(settings, job_events("before")))
        async with holder.transaction():
            await holder.execute("SELECT * FROM readmodel.checkpoint FOR UPDATE")
            last = await publish(settings, job_events("during"))
            # Until the projector's statement waits on it (on the holder's open transaction:
            # backend_activity clears the snapshot of pg_stat_activity Postgres keeps for it).
            await until_backends(holder, waiting_on_a_lock=True)
            stopping = asyncio.ensure_future(system.stop_service("projector"))
            done, _ = await asyncio.wait({stopping}, timeout=LONG_DEAD / 2)
            assert done, "the stop waits for the lock"
            assert await backends(holder, waiting_on_a_lock=True) == []  # nothing of the batch
        assert await count_jobs(own_postgres.url) == 1
        await system.start_projector()
        await wait_projected(settings, last)
        assert await count_jobs(own_postgres.url) == 2
        assert await replay_differences(settings) == {}
    finally:
        await holder.close()
        await system.stop()


async def test_a_stop_with_postgres_frozen_mid_copy_ends_the_projector(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    """Postgres frozen (SIGSTOP: the kernel still acknowledges, so the liveness probe stays
    quiet for the 30 s dead bound) with a COPY in flight: a stop ends the projector, the
    cancelled batch's ROLLBACK and release being cut after the stop's grace (the connection
    terminated) instead of waiting for a Postgres that never answers. Once thawed, a new
    projector stores every line once."""
    settings = msgspec.structs.replace(
        settings, database_url=own_postgres.url, projector_postgres_dead_seconds=LONG_DEAD
    )
    system = System(settings)
    await system.start_projector()
    try:
        publishing = await flood(settings, "j")
        await copy_in_flight(settings.database_url)
        with frozen_postgres(own_postgres):
            stopping = asyncio.ensure_future(system.stop_service("projector"))
            done, _ = await asyncio.wait({stopping}, timeout=LONG_DEAD / 3)
            assert done, "the stop still waits with Postgres frozen"
        await stopping
        await system.start_projector()
        await check_caught_up(settings, system, await publishing)
    finally:
        await system.stop()


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03])
async def test_stops_mid_copy_then_restarts_store_every_line_once(
    settings: Settings, own_postgres: EmbeddedPostgres, delay: float
) -> None:
    """Three stops, each ``delay`` after a COPY is seen running, each followed by a new
    projector: the cancelled batches roll back with their checkpoint and are applied again, no
    line lost or stored twice."""
    settings = msgspec.structs.replace(settings, database_url=own_postgres.url)
    system = System(settings)
    await system.start_projector()
    try:
        publishing = await flood(settings, "j")
        for _ in range(3):
            await copy_in_flight(settings.database_url)
            await asyncio.sleep(delay)
            await system.stop_service("projector")
            await system.start_projector()
        await check_caught_up(settings, system, await publishing)
    finally:
        await system.stop()


@pytest.mark.parametrize("cut_for", [DEAD * 0.5, None], ids=["shorter", "longer"])
async def test_a_rebuilder_whose_host_went_silent_lets_go_of_the_rebuild_lock(
    settings: Settings,
    postgres_behind_a_link: tuple[EmbeddedPostgres, CuttableLink],
    cut_for: float | None,
) -> None:
    """A rebuild's lock holder cut off from Postgres (its host gone: no reset, nothing) keeps
    the rebuild lock through a cut shorter than ``projector_postgres_dead_seconds``; past it
    Postgres lets the lock go, so another projector can take the rebuild over (it used to keep
    it until Postgres' own TCP keepalive, about 2 h)."""
    server, link = postgres_behind_a_link
    settings = through_the_link(settings, server, link)
    holder = await connect_lock_holder(
        settings.database_url, settings.projector_postgres_dead_seconds
    )
    observer = await asyncpg.connect(server.url)  # not through the link
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", REPLAY_LOCK)
        pid = holder.get_server_pid()
        assert await readmodelversion.rebuild_held(observer, pid)
        link.cut()
        if cut_for is not None:
            await asyncio.sleep(cut_for)
            await asyncio.to_thread(link.heal)
            assert await holder.fetchval("SELECT 1") == 1, "the holder's session lives on"
            assert await readmodelversion.rebuild_held(observer, pid)
        else:
            async with asyncio.timeout(60):  # two hours before
                while await readmodelversion.rebuild_held(observer, pid):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            await asyncio.to_thread(link.heal)
            assert await observer.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK)
    finally:
        holder.terminate()
        await observer.close()
