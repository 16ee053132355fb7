"""GET /health tells the truth: a stuck projector and a runner pool with no runner show up within
seconds, each with a code and a sentence."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from jobrunner.common import runnerpool
from jobrunner.common.processname import process_name
from jobrunner.common.settings import Settings
from jobrunner.common.slots import hostname
from jobrunner.contracts.events import utcnow
from jobrunner.contracts.names import Names
from tests.history_support import job_events, publish, publisher, wait_projected
from tests.system import System
from tests.tools.health_reports import codes, health

BEAT = 0.5  # seconds between runner heartbeats in these tests; gone after 3 missed (1.5 s)


@pytest.fixture
async def system(settings: Settings) -> AsyncIterator[System]:
    """Projector, one runner and the API, with fast heartbeats and a short stuck limit."""
    fast = msgspec.structs.replace(
        settings, runner_heartbeat_seconds=BEAT, projector_stuck_seconds=2.0, auth=False
    )
    running = System(fast)
    await running.start()
    yield running
    await running.stop()


async def health_until(system: System, condition: Any, timeout: float = 20.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            body = await health(system)
            if condition(body):
                return body
            await asyncio.sleep(0.1)


async def test_health_is_ok_with_a_runner_and_a_caught_up_projector(system: System) -> None:
    """With every part running, /health says ok and lists the runner alive."""
    body = await health_until(system, lambda b: b["runners"]["alive"] == 1)
    assert (body["http_status"], body["status"], body["problems"]) == (200, "ok", [])
    assert body["projector"]["state"] == "caught_up"


async def test_health_names_the_api_instance_it_was_given(settings: Settings) -> None:
    """An API started with ``api_instance_id`` says that name in /health's ``instance``."""
    named = msgspec.structs.replace(settings, api_instance_id="api-west-2", auth=False)
    async with System(named) as system:
        await system.start_api()
        assert (await health(system))["instance"] == "api-west-2"


def test_an_api_instance_without_a_name_gets_one_of_its_own() -> None:
    """Unnamed, each API start names itself after its host and pid, with random digits, so
    that two starts of the same process id still answer with other names."""
    unnamed = Settings().api_instance_id
    first, second = process_name(unnamed), process_name(unnamed)
    assert first.startswith(f"{hostname()}-{os.getpid()}-")
    assert first != second


async def test_health_says_no_runner_once_the_last_runner_stopped(system: System) -> None:
    """Stopping the only runner makes /health say degraded, NO_RUNNER."""
    await health_until(system, lambda b: b["runners"]["alive"] == 1)
    await system.stop_service("runner")
    body = await health_until(system, lambda b: "NO_RUNNER" in codes(b))
    assert (body["http_status"], body["status"], body["runners"]["alive"]) == (200, "degraded", 0)


async def test_a_heartbeat_counts_until_its_ttl_and_not_after(settings: Settings) -> None:
    """A runner that stopped beating (died) is alive for less than the TTL, gone after it."""
    fast = msgspec.structs.replace(settings, runner_heartbeat_seconds=BEAT)
    names = Names(fast.prefix)
    async with publisher(fast) as js:
        kv = await js.key_value(names.runners_bucket)
        beat = runnerpool.RunnerHeartbeat("dead-runner", "host", os.getpid(), utcnow())
        await kv.put(runnerpool.key_of(beat.runner_id), msgspec.json.encode(beat))
        # Just under the TTL (1.5 s): still there; we look right after the last beat.
        alive = await runnerpool.alive_runners(js, names)
        assert [b.runner_id for b in alive] == ["dead-runner"]
        async with asyncio.timeout(20):  # just past the TTL: gone
            while True:
                if not await runnerpool.alive_runners(js, names):
                    break
                await asyncio.sleep(0.1)


async def test_health_says_projector_stuck_when_events_wait_past_the_limit(
    system: System,
) -> None:
    """With the projector stopped, waiting events make /health say PROJECTOR_STUCK in seconds."""
    await system.stop_service("projector")
    await publish(system.settings, job_events("waiting"))
    body = await health(system)
    # Just under the limit (2 s): the event is waiting, the projector is not called stuck yet.
    assert body["projector"]["state"] in {"catching_up", "stuck"}
    if body["projector"]["oldest_waiting_seconds"] < 1.5:
        assert "PROJECTOR_STUCK" not in codes(body)
    body = await health_until(system, lambda b: "PROJECTOR_STUCK" in codes(b))
    assert (body["http_status"], body["status"], body["projector"]["state"]) == (
        200,
        "degraded",
        "stuck",
    )
    await system.start_projector()  # back: the verdict goes with the lag
    last = body["stream_last_seq"]
    await wait_projected(system.settings, last)
    body = await health_until(system, lambda b: "PROJECTOR_STUCK" not in codes(b))
    assert body["projector"]["state"] == "caught_up"


async def test_health_before_the_first_read_models_says_so_not_postgres_away(
    settings: Settings,
) -> None:
    """On a first start, before the projector made its tables, /health says the read models are
    being created (READ_MODELS_REBUILDING), with Postgres reachable; it used to report
    POSTGRES_UNREACHABLE, "cannot reach Postgres", at every first start."""
    api_only = System(msgspec.structs.replace(settings, auth=False))
    await api_only.start_api()
    try:
        body = await health(api_only)
    finally:
        await api_only.stop()
    assert "POSTGRES_UNREACHABLE" not in codes(body), body
    assert "READ_MODELS_REBUILDING" in codes(body)
    assert body["postgres"] is True
    assert body["read_models"]["state"] == "rebuilding"


ABSENT_LIMIT = 5.0  # projector_stuck_seconds in the next test: margin for a loaded machine


async def test_health_names_an_absent_projector_once_no_read_models_came_within_the_limit(
    settings: Settings,
) -> None:
    """An API on a database the projector never built: READ_MODELS_REBUILDING at first (a first
    start), and once none came for projector_stuck_seconds also PROJECTOR_ABSENT, naming the
    projector; it goes once a projector has made the read models."""
    api_only = System(
        msgspec.structs.replace(settings, projector_stuck_seconds=ABSENT_LIMIT, auth=False)
    )
    await api_only.start_api()
    try:
        # (asked at, answered at, absent said): the instance starts counting within the first
        # request, so an answer before LIMIT from its asking cannot say absent, and one asked
        # LIMIT after the first answer must.
        seen: list[tuple[float, float, dict[str, Any]]] = []
        async with asyncio.timeout(60):
            while not seen or seen[-1][0] - seen[0][1] <= ABSENT_LIMIT + 1:
                asked = time.monotonic()
                body = await health(api_only)
                seen.append((asked, time.monotonic(), body))
                await asyncio.sleep(0.2)
        first_asked, first_answered = seen[0][0], seen[0][1]
        shorter = [b for _, answered, b in seen if answered - first_asked < ABSENT_LIMIT]
        longer = [b for asked, _, b in seen if asked - first_answered > ABSENT_LIMIT]
        assert shorter
        assert longer
        for body in shorter:
            assert "READ_MODELS_REBUILDING" in codes(body), body
            assert "PROJECTOR_ABSENT" not in codes(body), body
        for body in longer:
            assert {"READ_MODELS_REBUILDING", "PROJECTOR_ABSENT"} <= set(codes(body)), body
            assert (body["http_status"], body["status"]) == (200, "degraded")
        message = next(p["message"] for p in longer[-1]["problems"] if "ABSENT" in p["code"])
        assert "No projector is at work" in message
        assert "jobrunner projector" in message

        await api_only.start_projector()
        body = await health_until(api_only, lambda b: "read_models" not in b)
        assert "PROJECTOR_ABSENT" not in codes(body)
    finally:
        await api_only.stop()
