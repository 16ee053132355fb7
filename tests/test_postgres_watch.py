"""The liveness probe of a command's long work (``postgreswatch``) against a real, healthy
Postgres: asked why the work failed, it must not say Postgres went away when it answers."""

from __future__ import annotations

import asyncio
import gc
import time

import asyncpg
import pytest
from structlog.testing import capture_logs

from jobrunner.common import postgreswatch
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres

pytestmark = pytest.mark.timeout(120)


def _never_gone() -> None:
    raise AssertionError("the probe found a healthy Postgres gone")


async def test_a_healthy_postgres_asked_mid_probe_is_not_said_gone(settings: Settings) -> None:
    """The probe asking all the time (every=0): asked whether Postgres is lost, at whatever
    point of its probe, a healthy Postgres is not. It cancelled the probe mid-query, whose
    clean-up ended its own connection: 'InterfaceError: connection is closed' about half the
    time."""
    said = []
    for n in range(20):
        watch = await postgreswatch.start(settings.database_url, _never_gone, every=0.0)
        try:
            # Let it probe (some rounds, then mid-query or between two): never timed.
            for _ in range(n):
                await asyncio.sleep(0)
            await asyncio.sleep(0.005)
            said.append(await watch.lost())
        finally:
            await watch.stop()
    assert said == [None] * 20


async def test_a_probe_that_finds_postgres_gone_says_why_and_ends_its_connection(
    settings: Settings,
) -> None:
    """The probe's own backend terminated: lost() says why (Postgres ended the connection)."""
    watch = await postgreswatch.start(settings.database_url, lambda: None, every=0.0)
    try:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1",
                watch._conn.get_server_pid(),
            )
        finally:
            await conn.close()
        assert await watch.lost() is not None
    finally:
        await watch.stop()


async def test_a_probe_answered_while_the_loop_was_blocked_past_its_bound_is_answered(
    settings: Settings,
) -> None:
    """The command's event loop blocked (a long synchronous step of the work) past the probe's
    bound while Postgres answered its SELECT 1: the answer is read, Postgres is not gone (the
    wait's timeout, due at the same turn of the loop, was taken for no answer)."""
    bound = 0.5
    watch = await postgreswatch.start(
        settings.database_url, _never_gone, answer_within=bound, every=0.0
    )
    try:
        for _ in range(3):
            while watch._round is None:  # noqa: ASYNC110 - the probe's own state, no event
                await asyncio.sleep(0)
            # The round's task starts, sends its SELECT 1 and waits: three turns of the loop.
            for _ in range(3):
                await asyncio.sleep(0)
            time.sleep(bound * 4)  # noqa: ASYNC251 - the loop blocked; Postgres answers meanwhile
            await asyncio.sleep(0.05)  # the round reads the answer and the timeout at once
            assert watch.gone is None
        assert await watch.lost() is None
    finally:
        await watch.stop()


async def _terminate_backend(database_url: str, pid: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


async def test_a_stop_cancelled_by_its_caller_still_ends_the_probes_connection(
    settings: Settings,
) -> None:
    """The work's clean-up cancelled while it stops the probe (a second Ctrl-C): the probe's
    connection is ended all the same, and the cancellation reaches the caller (it was
    swallowed)."""
    watch = await postgreswatch.start(settings.database_url, _never_gone, every=3600.0)
    stopping = asyncio.create_task(watch.stop())
    await asyncio.sleep(0)  # stop() has cancelled the probe and waits for it
    stopping.cancel()
    await asyncio.wait({stopping})
    assert stopping.cancelled()
    assert watch._conn.is_closed()


async def test_an_on_gone_that_fails_is_logged_not_left_unretrieved(settings: Settings) -> None:
    """on_gone (ending the work's connections) raising: the probe logs it, and no task is left
    with an exception nobody retrieves (asyncio's "Task exception was never retrieved")."""
    unretrieved: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))

    def failing_on_gone() -> None:
        raise RuntimeError("ending the work's connections failed")

    try:
        with capture_logs() as logs:
            watch = await postgreswatch.start(settings.database_url, failing_on_gone, every=0.0)
            await _terminate_backend(settings.database_url, watch._conn.get_server_pid())
            while watch.gone is None:  # noqa: ASYNC110 - the probe's own state, no event
                await asyncio.sleep(0.01)
            await watch.stop()
            del watch
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert unretrieved == []
    assert any("on_gone" in str(entry.get("event")) for entry in logs), logs


# What the probe's backend writes to the server's log when a cancel lands while it runs the
# probe's SELECT 1 (a cancel landing while it waits for the next one is ignored by Postgres).
CANCELLED_IN_LOG = "ERROR:  canceling statement due to user request"
# Cancels sent before the test gives up on landing one mid-probe: a bound on a broken test only
# (a few dozen land one on an idle machine).
MOST_CANCELS = 20_000


async def test_a_probe_cancelled_by_an_operator_is_postgres_answering(
    own_postgres: EmbeddedPostgres,
) -> None:
    """``pg_cancel_backend`` of the probe's backend, sent until one lands on a probe's
    SELECT 1 (the server's log says so): Postgres answered the probe, with a cancel, so the work
    is not said to have lost it. Before the fix the watch said "QueryCanceledError: canceling
    statement due to user request", ended the work's connections, and the replay said Postgres
    went away."""
    gone: list[str] = []
    watch = await postgreswatch.start(own_postgres.url, lambda: gone.append("on_gone"), every=0.0)
    operator = await asyncpg.connect(own_postgres.url)
    probe = watch._conn.get_server_pid()
    landed = f"[{probe}] {CANCELLED_IN_LOG}"
    server_log = own_postgres.log_file
    try:
        for sent in range(1, MOST_CANCELS + 1):
            await operator.execute("SELECT pg_cancel_backend($1)", probe)
            if watch.gone is not None or (sent % 20 == 0 and landed in server_log.read_text()):
                break
        else:
            pytest.fail(f"none of {MOST_CANCELS} cancels landed on a probe's SELECT 1")
        assert watch.gone is None, watch.gone
        assert await watch.lost() is None
        assert gone == []
    finally:
        await operator.close()
        await watch.stop()
