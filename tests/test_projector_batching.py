"""A batch of events gives exactly the rows that the same events give one by one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from jobrunner.common import database, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, JobStatus
from jobrunner.contracts.names import Names
from jobrunner.services.projector import service, setaside, store, upgrade
from jobrunner.services.projector.feed import EventFeed
from jobrunner.services.projector.projections import Unreadable, project
from jobrunner.services.projector.setaside import StoredMessage
from tests.history_support import publish
from tests.servers import PostgresCluster

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def history() -> list[events.Event]:
    """Two jobs' lives, with the late and repeated events a projector must ignore."""
    out: list[events.Event] = []
    for n, job_id in enumerate(("a", "b")):
        at = T0 + timedelta(minutes=n)
        out += [
            events.JobRequested(job_id=job_id, occurred_at=at, job_type="scraper", lock="sheet"),
            events.StatusChanged(job_id=job_id, occurred_at=at, status=JobStatus.RUNNING),
            events.LineLogged(
                job_id=job_id,
                lines=[events.LogLine(i, "stdout", "INFO", at, f"line {i}") for i in (1, 2, 3)],
            ),
            events.ProgressReported(job_id=job_id, occurred_at=at, current=3, total=9),
            events.CancelRequested(job_id=job_id, occurred_at=at, requested_by="ops"),
            events.StatusChanged(
                job_id=job_id,
                occurred_at=at + timedelta(seconds=5),
                status=JobStatus.FAILED,
                exit_code=2,
                error=ErrorInfo(code="EXIT_NONZERO", message="exit 2"),
                result={"found": n},
            ),
            # Too late: the job already ended; neither may change the row.
            events.StatusChanged(job_id=job_id, occurred_at=at, status=JobStatus.RUNNING),
            events.StatusChanged(job_id=job_id, occurred_at=at, status=JobStatus.COMPLETED),
            events.LineLogged(
                job_id=job_id, lines=[events.LogLine(4, "stderr", "ERROR", at, "last")]
            ),
        ]
    out.append(events.JobRequested(job_id="a", occurred_at=T0, job_type="again"))  # repeated
    return out


async def rows(conn: asyncpg.Connection, schema: str) -> tuple[list[dict], list[dict]]:
    jobs = await conn.fetch(f"SELECT * FROM {schema}.jobs ORDER BY id")
    lines = await conn.fetch(f"SELECT * FROM {schema}.log_lines ORDER BY job_id, seq")
    return [dict(r) for r in jobs], [dict(r) for r in lines]


async def test_one_batch_and_event_by_event_give_the_same_rows(
    pg_cluster: PostgresCluster,
) -> None:
    """Folding a whole job into one insert changes nothing a reader of the tables can see."""
    conn = await asyncpg.connect(await pg_cluster.fresh_database())
    await database.init_connection(conn)
    try:
        batch = [(seq, project(e, seq)) for seq, e in enumerate(history(), start=1)]
        await store.create_schema(conn, "one_batch")
        await store.create_schema(conn, "one_by_one")
        assert await store.apply_batch(conn, batch, "one_batch") == len(batch)
        for item in batch:
            await store.apply_batch(conn, [item], "one_by_one")
        folded, single = await rows(conn, "one_batch"), await rows(conn, "one_by_one")
    finally:
        await conn.close()
    assert folded == single
    jobs, lines = folded
    assert [(j["id"], j["status"], j["log_count"], j["job_type"]) for j in jobs] == [
        ("a", "failed", 4, "scraper"),
        ("b", "failed", 4, "scraper"),
    ]
    assert len(lines) == 8


async def test_the_caller_hears_when_a_batch_s_bulk_writes_start(
    pg_cluster: PostgresCluster,
) -> None:
    """``writing`` is called inside the batch's transaction once its checkpoint is locked, as its
    writes start (the live projector lets its feed decode ahead from then on); not for a batch
    whose events are all applied already."""
    conn = await asyncpg.connect(await pg_cluster.fresh_database())
    await database.init_connection(conn)
    calls: list[bool] = []  # in a transaction at each call

    def writing() -> None:
        calls.append(conn.is_in_transaction())

    try:
        batch = [(seq, project(e, seq)) for seq, e in enumerate(history(), start=1)]
        await store.create_schema(conn, "heard")
        for item in batch:
            calls.clear()
            await store.apply_batch(conn, [item], "heard", writing)
            assert calls, item
            assert all(calls), item
        calls.clear()
        await store.apply_batch(conn, batch, "heard", writing)  # all of it applied already
    finally:
        await conn.close()
    assert calls == []


async def test_the_live_projector_lets_its_held_feed_go_as_the_batch_s_writes_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector holds its feed from a fetch; applying the batch lets it go once the batch's
    bulk writes start (``writing=feed.resume``). Without that the feed stays held through the
    whole transaction, and decodes nothing ahead while Postgres writes."""
    last = await publish(settings, history())
    await upgrade.ensure_current(settings)
    pool = await service.open_pool(settings)
    nc = await eventstore.connect(settings, "test")
    feed = EventFeed(nc.jetstream(), Names(settings.prefix), settings, name="test")
    resumed: list[None] = []
    resume = feed.resume

    def recorded() -> None:
        resumed.append(None)
        resume()

    monkeypatch.setattr(feed, "resume", recorded)
    try:
        await feed.start(1)
        batch = await feed.fetch(timeout=30)
        while batch[-1][0] < last:
            batch += await feed.fetch(timeout=30)
        feed.hold()
        applied = await service._apply_until_done(pool, batch, feed, asyncio.Event(), committed=0)
    finally:
        await feed.close()
        await eventstore.close(nc)
        await pool.close()
    assert applied == last
    assert resumed, "the feed was never let go while the batch was applied"


async def test_a_batch_applied_whole_costs_no_second_read_of_the_checkpoint(
    pg_cluster: PostgresCluster,
) -> None:
    """A batch with nothing to set aside reads its checkpoint once, locked, in its transaction:
    the checkpoint it then returns is the one it wrote, not read again (a round trip a batch,
    a hundred of them in a replay of a million events, each one the replay waits on). A batch
    that set an event aside returns the stored checkpoint as before."""
    conn = await asyncpg.connect(await pg_cluster.fresh_database())
    await database.init_connection(conn)
    reads: list[str] = []

    def logged(record: asyncpg.connection.LoggedQuery) -> None:
        if "checkpoint" in record.query and record.query.lstrip().startswith("SELECT"):
            reads.append(record.query)

    async def lookup(seq: int) -> StoredMessage | None:
        return StoredMessage("t.job.x.created", b"not an event")

    try:
        batch = [(seq, project(e, seq)) for seq, e in enumerate(history(), start=1)]  # type: ignore[arg-type]
        await store.create_schema(conn, "once")
        conn.add_query_logger(logged)
        assert await setaside.apply(conn, batch, lookup, "once") == len(batch)
        await asyncio.sleep(0)  # asyncpg hands each query to its loggers in a callback
        assert len(reads) == 1, reads
        assert "FOR UPDATE" in reads[0]
        after = len(batch) + 1
        assert await setaside.apply(conn, [(after, [Unreadable("bad")])], lookup, "once") == after
        assert await store.checkpoint(conn, "once") == after
    finally:
        await conn.close()


async def test_a_batch_applied_whole_returns_this_projector_s_own_position(
    pg_cluster: PostgresCluster,
) -> None:
    """What a batch applied whole returns is the checkpoint its own transaction left: the events
    past it when some were new, the stored checkpoint when all had been applied already (by
    another projector), and a stored checkpoint behind what the caller had committed stops the
    batch, whatever it holds."""
    conn = await asyncpg.connect(await pg_cluster.fresh_database())
    await database.init_connection(conn)

    async def lookup(seq: int) -> StoredMessage | None:
        raise AssertionError(f"nothing is set aside here, yet {seq} was looked up")

    try:
        batch = [(seq, project(e, seq)) for seq, e in enumerate(history(), start=1)]  # type: ignore[arg-type]
        n = len(batch)
        await store.create_schema(conn, "own")
        assert await setaside.apply(conn, batch[: n - 4], lookup, "own") == n - 4
        assert await setaside.apply(conn, batch[:3], lookup, "own") == n - 4
        assert await setaside.apply(conn, batch[2:], lookup, "own") == n
        with pytest.raises(store.CheckpointBehind) as behind:
            await setaside.apply(conn, batch[2:], lookup, "own", committed=n + 5)
        assert behind.value.stored == n
        assert await store.checkpoint(conn, "own") == n
    finally:
        await conn.close()
