"""GET /health with NATS frozen (SIGSTOP: the connection stays up, nothing answers): past
``health_nats_timeout_seconds`` it answers 503 ``NATS_TIMEOUT``; a freeze shorter than that is
waited out. It used to wait out nats-py's 5 s request timeout twice (the stream's end, the
runners) and then answer 200 "ok" with no problem at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from jobrunner.common import runnerpool
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze
from tests.history_support import reading_system
from tests.system import System
from tests.tools.health_reports import codes, status_and_report
from tests.tools.nats_silence import thaw

NATS_DEADLINE = 4.0  # health_nats_timeout_seconds here
SHORTER = NATS_DEADLINE / 2  # a freeze health waits out, with 2 s to spare on a loaded machine


@pytest.fixture
async def system(settings: Settings, own_nats: EmbeddedNats) -> AsyncIterator[System]:
    """Projector and API on a nats-server of this test's own (it is frozen)."""
    own = msgspec.structs.replace(
        settings, nats_url=own_nats.url, health_nats_timeout_seconds=NATS_DEADLINE
    )
    async with reading_system(own) as running:
        yield running


async def test_health_says_nats_timeout_while_nats_is_frozen(
    system: System, own_nats: EmbeddedNats
) -> None:
    """NATS frozen past the deadline: 503 unavailable, NATS_TIMEOUT with a sentence, not "ok"."""
    status, body = await status_and_report(system)
    assert "NATS_TIMEOUT" not in codes(body), body
    assert own_nats.proc is not None
    freeze(own_nats.proc.pid)
    try:
        status, body = await status_and_report(system)
    finally:
        thaw(own_nats)
    assert (status, body["status"]) == (503, "unavailable"), body
    assert "NATS_TIMEOUT" in codes(body), body
    assert body["nats"] is True  # connected: frozen, not away
    assert body["stream_last_seq"] is None
    # Back: health answers with the stream's end again, by itself.
    status, body = await status_and_report(system)
    assert "NATS_TIMEOUT" not in codes(body), body
    assert isinstance(body["stream_last_seq"], int), body


async def test_health_waits_out_a_nats_freeze_shorter_than_its_deadline(
    system: System, own_nats: EmbeddedNats
) -> None:
    """NATS frozen for half the deadline while health reads it: no NATS_TIMEOUT, the figures."""
    await status_and_report(system)  # the API's connections and the stream are made
    assert own_nats.proc is not None
    freeze(own_nats.proc.pid)
    try:
        answer = asyncio.create_task(status_and_report(system))
        await asyncio.sleep(SHORTER)  # the fault's length itself
        assert not answer.done(), "health answered during the freeze: it did not bite"
    finally:
        thaw(own_nats)
    status, body = await answer
    assert "NATS_TIMEOUT" not in codes(body), body
    assert status == 200, body
    assert isinstance(body["stream_last_seq"], int), body


def freeze_at_runners_read(
    monkeypatch: pytest.MonkeyPatch, server: EmbeddedNats, thaw_after: float | None = None
) -> list[bool]:
    """Freeze NATS when health's next runners read starts (its stream-end read answered), and
    thaw it ``thaw_after`` seconds later (None: the test thaws it); the list says it froze."""
    real = runnerpool.alive_runners
    assert server.proc is not None
    pid = server.proc.pid
    froze: list[bool] = []

    async def frozen_first(*args: Any) -> list[runnerpool.RunnerHeartbeat]:
        monkeypatch.setattr(runnerpool, "alive_runners", real)  # once
        freeze(pid)
        froze.append(True)
        if thaw_after is not None:
            asyncio.get_running_loop().call_later(thaw_after, thaw, server)
        return await real(*args)

    monkeypatch.setattr(runnerpool, "alive_runners", frozen_first)
    return froze


async def test_health_is_degraded_when_only_the_runners_read_times_out(
    system: System, own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS answered the stream's end, then froze past the bound: 200 degraded with NATS_SLOW
    and the runners unknown, not 503 (that first read says whether NATS answers at all)."""
    await status_and_report(system)
    froze = freeze_at_runners_read(monkeypatch, own_nats)
    try:
        status, body = await status_and_report(system)
    finally:
        thaw(own_nats)
    assert froze, "the runners read was not frozen"
    assert (status, body["status"]) == (200, "degraded"), body
    assert "NATS_SLOW" in codes(body), body
    assert "NATS_TIMEOUT" not in codes(body), body
    assert body["runners"]["alive"] is None, body
    assert isinstance(body["stream_last_seq"], int), body
    status, body = await status_and_report(system)  # back by itself
    assert "NATS_SLOW" not in codes(body), body


async def test_health_waits_out_a_freeze_of_its_runners_read_shorter_than_the_bound(
    system: System, own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runners read frozen for half the bound: waited out, the runners known."""
    await status_and_report(system)
    froze = freeze_at_runners_read(monkeypatch, own_nats, thaw_after=SHORTER)
    try:
        status, body = await status_and_report(system)
    finally:
        thaw(own_nats)
    assert froze, "the runners read was not frozen"
    assert status == 200, body
    assert codes(body) == ["NO_RUNNER"], body
    assert body["runners"]["alive"] == 0, body  # no runner in this system
