"""What ``GET /health`` logs while something is wrong, polled as a load balancer does (a real
nats-server SIGSTOPped: every answer 503 NATS_TIMEOUT). The first answer that is not ok is
logged at once; answers within ``health_log_seconds`` of that line are counted, not logged; the
first past it is logged with their count (``since_last``); one line says when health is ok again
after that long outage. Flapping (NATS frozen and thawed again and again) within the period is
counted, not logged, into the next line past it (``flaps``); a blip's "ok again" waits for the
period. (Before: a line per answer, a line a second for as long as the outage lasted; later a
line at each "not ok" and each "ok again" of a flapping health.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze
from tests.system import System
from tests.tools.health_reports import status_and_report
from tests.tools.nats_silence import thaw

PERIOD = 5.0  # health_log_seconds here
NATS_DEADLINE = 0.5  # health_nats_timeout_seconds here: a frozen NATS answered fast


@pytest.fixture
def settings(settings: Settings, own_nats: EmbeddedNats) -> Settings:
    return msgspec.structs.replace(
        settings,
        nats_url=own_nats.url,
        health_log_seconds=PERIOD,
        health_nats_timeout_seconds=NATS_DEADLINE,
    )


async def ok(system: System) -> int:
    """Poll /health until it is ok; how many answers were not."""
    bad = 0
    async with asyncio.timeout(30):
        while (await status_and_report(system))[1]["status"] != "ok":
            bad += 1
            await asyncio.sleep(0.05)
    return bad


async def unavailable(system: System) -> None:
    status, body = await status_and_report(system)
    assert (status, body["status"]) == (503, "unavailable"), body


def health_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"].startswith("health is")]


async def test_health_while_nats_is_frozen_logs_a_line_per_period_with_a_count(
    system: System, own_nats: EmbeddedNats
) -> None:
    assert own_nats.proc is not None
    await ok(system)
    with capture_logs() as logs:
        freeze(own_nats.proc.pid)
        try:
            started = time.monotonic()
            await unavailable(system)  # logged at once
            first_answered = time.monotonic()
            within = 0
            # Answers surely within the period of the first line: counted, not logged.
            while time.monotonic() + 2 * NATS_DEADLINE < started + PERIOD:
                await unavailable(system)
                within += 1
            assert within >= 2
            assert [line["event"] for line in health_lines(logs)] == ["health is not ok"]
            # Just past the period (the fault's schedule, not a proof): logged, with the count.
            await asyncio.sleep(max(0.0, first_answered + PERIOD + 0.1 - time.monotonic()))
            await unavailable(system)
        finally:
            thaw(own_nats)
        after_thaw = await ok(system)  # an outage longer than the period: ok again at once
        ok_again_at = time.monotonic()
        await ok(system)  # ok again and again: nothing more logged
        # Flapping within the period of the "ok again" line: counted, not logged (before: a
        # line at each "not ok" and at each "ok again").
        # One flap, well inside the period (each more would risk crossing its end on a loaded
        # machine, and then be logged as it should: the unit tests cover many flaps).
        left_out = flaps = 0
        while flaps < 1 and time.monotonic() + 6 * NATS_DEADLINE < ok_again_at + PERIOD:
            freeze(own_nats.proc.pid)
            try:
                await unavailable(system)
            finally:
                thaw(own_nats)
            left_out += 1 + await ok(system) + 1
            flaps += 1
        assert flaps >= 1
        assert len(health_lines(logs)) == 3, health_lines(logs)
        # Past the period: the next "not ok" is logged, with the flaps left out.
        await asyncio.sleep(max(0.0, ok_again_at + PERIOD + 0.1 - time.monotonic()))
        freeze(own_nats.proc.pid)
        try:
            await unavailable(system)
            last_line_at = time.monotonic()
        finally:
            thaw(own_nats)
        # A blip shorter than the period: its "ok again" waits for the period to end.
        after_blip = await ok(system)
        assert len(health_lines(logs)) == 4, health_lines(logs)
        await asyncio.sleep(max(0.0, last_line_at + PERIOD + 0.1 - time.monotonic()))
        await ok(system)
    lines = health_lines(logs)
    assert [(line["event"], line.get("since_last"), line.get("flaps")) for line in lines] == [
        ("health is not ok", None, None),
        ("health is not ok", within, None),
        ("health is ok again", after_thaw or None, None),
        ("health is not ok", left_out, flaps),
        ("health is ok again", after_blip + 1, 1),
    ], lines
    assert lines[0]["problems"] == ["NATS_TIMEOUT"]
    assert lines[0]["status"] == "unavailable"
