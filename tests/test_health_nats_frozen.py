"""GET /health with NATS frozen (SIGSTOP: the connection stays up, nothing answers): past
``health_nats_timeout_seconds`` it answers 503 ``NATS_TIMEOUT``; a freeze shorter than that is
waited out. It used to wait out nats-py's 5 s request timeout twice (the stream's end, the
runners) and then answer 200 "ok" with no problem at all."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze
from tests.history_support import reading_system
from tests.system import System

NATS_DEADLINE = 2.0  # health_nats_timeout_seconds here
SHORTER = NATS_DEADLINE / 2  # a freeze health waits out


@pytest.fixture
async def system(settings: Settings, own_nats: EmbeddedNats) -> AsyncIterator[System]:
    """Projector and API on a nats-server of this test's own (it is frozen)."""
    own = msgspec.structs.replace(
        settings, nats_url=own_nats.url, health_nats_timeout_seconds=NATS_DEADLINE
    )
    async with reading_system(own) as running:
        yield running


async def health(system: System) -> tuple[int, dict[str, Any]]:
    async with system.client(token=None) as client:
        response = await client.get("/health")
    return response.status_code, response.json()


def codes(body: dict[str, Any]) -> list[str]:
    return [p["code"] for p in body["problems"]]


def thaw(server: EmbeddedNats) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)


async def test_health_says_nats_timeout_while_nats_is_frozen(
    system: System, own_nats: EmbeddedNats
) -> None:
    """NATS frozen past the deadline: 503 unavailable, NATS_TIMEOUT with a sentence, not "ok"."""
    status, body = await health(system)
    assert "NATS_TIMEOUT" not in codes(body), body
    assert own_nats.proc is not None
    freeze(own_nats.proc.pid)
    try:
        status, body = await health(system)
    finally:
        thaw(own_nats)
    assert (status, body["status"]) == (503, "unavailable"), body
    assert "NATS_TIMEOUT" in codes(body), body
    assert body["nats"] is True  # connected: frozen, not away
    assert body["stream_last_seq"] is None
    # Back: health answers with the stream's end again, by itself.
    status, body = await health(system)
    assert "NATS_TIMEOUT" not in codes(body), body
    assert isinstance(body["stream_last_seq"], int), body


async def test_health_waits_out_a_nats_freeze_shorter_than_its_deadline(
    system: System, own_nats: EmbeddedNats
) -> None:
    """NATS frozen for half the deadline while health reads it: no NATS_TIMEOUT, the figures."""
    await health(system)  # the API's connections and the stream are made
    assert own_nats.proc is not None
    freeze(own_nats.proc.pid)
    try:
        answer = asyncio.create_task(health(system))
        await asyncio.sleep(SHORTER)  # the fault's length itself
        assert not answer.done(), "health answered during the freeze: it did not bite"
    finally:
        thaw(own_nats)
    status, body = await answer
    assert "NATS_TIMEOUT" not in codes(body), body
    assert status == 200, body
    assert isinstance(body["stream_last_seq"], int), body
