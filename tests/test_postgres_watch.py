"""The liveness probe of a command's long work (``postgreswatch``) against a real, healthy
Postgres: asked why the work failed, it must not say Postgres went away when it answers."""

from __future__ import annotations

import asyncio
import gc
import select
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import uvloop
from structlog.testing import capture_logs

from jobrunner.common import postgreswatch
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests.freeze import freeze, thaw
from tests.tools.postgres_processes import freeze_postgres
from tests.tools.postgres_processes import thaw as thaw_postgres
from tests.tools.reader_block import reader_block

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


# The probe's bound in the tests of a loop blocked around its query: the blocks go just under
# and just over it.
BOUND = 0.5
ROUNDS = 3


def _loop_blocked_at_each_send(
    conn: asyncpg.Connection, blocked: float, sent_first: bool
) -> list[float]:
    """Each query the probe's connection sends blocks the event loop for ``blocked`` seconds (a
    long synchronous step of the work): just before it goes out, or (``sent_first``) at the
    loop's next turn after it went out, once the probe waits for its answer, and then until
    that answer waits in the socket, however loaded the machine. Returns the list the blocks
    are counted in."""
    transport = conn._transport
    sock = transport.get_extra_info("socket")
    send = transport.write
    blocks: list[float] = []

    def block() -> None:
        time.sleep(blocked)
        blocks.append(blocked)

    def block_until_answered() -> None:
        block()
        # A bound on a broken test only: past it the probe says no answer, failing the test.
        select.select([sock], [], [], 60)

    def blocked_around_the_send(data: bytes) -> None:
        if sent_first:
            send(data)
            asyncio.get_running_loop().call_soon(block_until_answered)
        else:
            block()
            send(data)

    transport.write = blocked_around_the_send
    return blocks


@pytest.mark.parametrize("sent_first", [False, True], ids=["before-its-send", "after-its-send"])
@pytest.mark.parametrize("blocked", [BOUND * 0.8, BOUND * 1.25], ids=["shorter", "longer"])
async def test_a_probe_whose_loop_blocked_around_its_query_is_answered(
    settings: Settings, sent_first: bool, blocked: float
) -> None:
    """The command's event loop blocked (a long synchronous step of the work) just before the
    probe's SELECT 1 goes out, or just after while Postgres answers it, for a little less or a
    little more than the probe's bound: the answer is read, Postgres is not gone. Before, the
    bound ran from before the query was sent: a block past it there was taken for no answer
    (the flake of the test this one replaced, 1 run in 6 under -n 2); and with the timeout due
    at the same turn as the answer, the answer was not read."""
    watch = await postgreswatch.start(
        settings.database_url, _never_gone, answer_within=BOUND, every=0.0
    )
    try:
        blocks = _loop_blocked_at_each_send(watch._conn, blocked, sent_first)
        while len(blocks) < ROUNDS and watch.gone is None:  # noqa: ASYNC110 - the probe's state
            await asyncio.sleep(0.01)
        assert watch.gone is None
        assert await watch.lost() is None  # the round in flight too
    finally:
        await watch.stop()


# The event loops the probe runs on: asyncio's (jobrunner replay) and uvloop's (the projector's
# rebuild, `jobrunner projector`). Each test below runs its own loop of the kind.
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class _CallingBeforeEachExecute(asyncpg.Connection):  # type: ignore[misc]
    """A connection whose every ``execute`` (the probe's SELECT 1) first calls ``before_send``,
    in the step that sends the query."""

    before_send: Callable[[], None] = staticmethod(lambda: None)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        self.before_send()
        return await super().execute(query, *args, **kwargs)  # type: ignore[no-any-return]


async def _probe_with_its_loop_blocked_at_each_send(
    database_url: str, blocked: float, sent_first: bool
) -> tuple[str | None, str | None]:
    """The probe on the running loop, which each of its SELECT 1s blocks for ``blocked``
    seconds: just before it goes out, or (``sent_first``) at the loop's next poll after it went
    out, inside an I/O callback (the work's connection reading a big result, say), and then
    until its answer waits in the socket, however loaded the machine. There the answer is held
    (its backend frozen) until that callback runs: it cannot be read in the poll that runs it.
    Returns what the watch found and what ``lost`` says after ``ROUNDS`` blocks."""
    conn = await asyncpg.connect(database_url, connection_class=_CallingBeforeEachExecute)
    backend = conn.get_server_pid()
    answers = conn._transport.get_extra_info("socket")
    blocks: list[float] = []

    def block() -> None:
        time.sleep(blocked)
        blocks.append(blocked)

    def block_until_answered() -> None:
        thaw(backend)
        block()
        # A bound on a broken test only: past it the probe says no answer, failing the test.
        select.select([answers], [], [], 60)

    with reader_block() as reader:

        def hold_the_answer_for_the_block() -> None:
            freeze(backend)
            reader.at_next_poll(block_until_answered)

        conn.before_send = hold_the_answer_for_the_block if sent_first else block
        watch = postgreswatch.LivenessWatch(conn, _never_gone, answer_within=BOUND, every=0.0)
        try:
            while len(blocks) < ROUNDS and watch.gone is None:  # noqa: ASYNC110 - its state
                await asyncio.sleep(0.01)
            return watch.gone, await watch.lost()  # the round in flight too
        finally:
            await watch.stop()
            thaw(backend)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    "sent_first", [False, True], ids=["before-its-send", "after-its-send-in-an-io-callback"]
)
@pytest.mark.parametrize("blocked", [BOUND * 0.8, BOUND * 1.25], ids=["shorter", "longer"])
def test_a_probe_whose_loop_blocked_around_its_send_is_answered_on_either_loop(
    settings: Settings, loop: str, sent_first: bool, blocked: float
) -> None:
    """The event loop blocked just before the probe's SELECT 1 goes out, or inside an I/O
    callback just after while Postgres answers it, for a little less or a little more than the
    probe's bound: the answer is read, Postgres is not gone, on uvloop (the projector's rebuild)
    as on asyncio's loop (jobrunner replay). Before, on uvloop, the block a little longer after
    the send said a live Postgres gone ("no answer to a probe within 0.5 s"): libuv ran the
    bound's timeout, and the turn the probe then gave the answer, before it read the answer."""
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        found, lost = runner.run(
            _probe_with_its_loop_blocked_at_each_send(settings.database_url, blocked, sent_first)
        )
    assert (found, lost) == (None, None)


async def _probe_until_frozen_postgres_is_gone(server: EmbeddedPostgres) -> list[str | None]:
    """The probe on the running loop, ``server`` frozen once it runs, until the probe calls
    on_gone: what it had found then."""
    found: list[str | None] = []
    watch = await postgreswatch.start(
        server.url, lambda: found.append(watch.gone), answer_within=BOUND, every=0.0
    )
    frozen = freeze_postgres(server)
    try:
        while not found:  # noqa: ASYNC110 - the probe's own state, no event
            await asyncio.sleep(0.01)
    finally:
        await watch.stop()
        thaw_postgres(frozen)
    return found


@pytest.mark.parametrize("loop", LOOPS)
def test_a_frozen_postgres_is_said_gone(own_postgres: EmbeddedPostgres, loop: str) -> None:
    """Postgres frozen (SIGSTOP) under a running probe: the probe says it gone, and why, on
    uvloop as on asyncio's loop."""
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        found = runner.run(_probe_until_frozen_postgres_is_gone(own_postgres))
    assert found == [f"no answer to a probe within {BOUND:g} s"]


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
