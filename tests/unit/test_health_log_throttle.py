"""What ``GET /health``'s log says of a health that flaps or gets worse (``HealthLog`` with a
clock the test moves): a probe's answer a second, ``health_log_seconds`` 60."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from structlog.testing import capture_logs

from jobrunner.services.api.healthlog import HealthLog

PERIOD = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Told = tuple[str, str | None, int | None, int | None]  # event, status, since_last, flaps


def told(logs: list[MutableMapping[str, Any]]) -> list[Told]:
    return [
        (line["event"], line.get("status"), line.get("since_last"), line.get("flaps"))
        for line in logs
        if line["event"].startswith("health is")
    ]


def answer(health_log: HealthLog, status: str) -> None:
    health_log.answered(status, [] if status == "ok" else ["NATS_TIMEOUT"])


def test_health_flapping_every_second_logs_one_line_per_period_with_the_flaps() -> None:
    """bad/ok/bad/ok each second for three periods: three lines, not one a second."""
    clock = Clock()
    health_log = HealthLog(PERIOD, clock=clock)
    with capture_logs() as logs:
        for second in range(int(3 * PERIOD)):
            clock.now = 1000.0 + second
            answer(health_log, "unavailable" if second % 2 == 0 else "ok")
    assert told(logs) == [
        ("health is not ok", "unavailable", None, None),
        ("health is not ok", "unavailable", 59, 30),
        ("health is not ok", "unavailable", 59, 30),
    ]


def test_health_getting_worse_is_logged_at_once() -> None:
    """degraded, then unavailable a second later: the worse status is not held back."""
    clock = Clock()
    health_log = HealthLog(PERIOD, clock=clock)
    with capture_logs() as logs:
        answer(health_log, "degraded")
        clock.now += 1
        answer(health_log, "degraded")
        clock.now += 1
        answer(health_log, "unavailable")
        clock.now += 1
        answer(health_log, "unavailable")
        clock.now += 1
        answer(health_log, "degraded")  # better: counted
    assert told(logs) == [
        ("health is not ok", "degraded", None, None),
        ("health is not ok", "unavailable", 1, None),
    ]


def test_health_ok_again_after_a_long_outage_is_logged_at_once() -> None:
    """An outage longer than the period ends with its 'ok again' line at once."""
    clock = Clock()
    health_log = HealthLog(PERIOD, clock=clock)
    with capture_logs() as logs:
        for _ in range(int(PERIOD) + 10):
            answer(health_log, "unavailable")
            clock.now += 1
        answer(health_log, "ok")
        clock.now += 1
        answer(health_log, "ok")  # ok and ok: nothing more
    assert told(logs) == [
        ("health is not ok", "unavailable", None, None),
        ("health is not ok", "unavailable", 59, None),
        ("health is ok again", None, 9, None),
    ]


def test_health_ok_again_after_a_blip_is_logged_once_the_period_is_over() -> None:
    """A five-second blip: its 'ok again' waits for the period (it might be a flap), then comes
    with the next answer past it, with the count of answers left out."""
    clock = Clock()
    health_log = HealthLog(PERIOD, clock=clock)
    with capture_logs() as logs:
        for second in range(int(PERIOD) + 5):
            clock.now = 1000.0 + second
            answer(health_log, "unavailable" if second < 5 else "ok")
    assert told(logs) == [
        ("health is not ok", "unavailable", None, None),
        ("health is ok again", None, 59, 1),
    ]


def test_a_new_outage_long_after_the_last_line_is_logged_at_once() -> None:
    """Healthy for longer than the period since the last line: the next outage's first answer
    is logged at once."""
    clock = Clock()
    health_log = HealthLog(PERIOD, clock=clock)
    with capture_logs() as logs:
        answer(health_log, "unavailable")
        clock.now += PERIOD
        answer(health_log, "ok")  # past the period: logged at once
        clock.now += PERIOD
        answer(health_log, "degraded")
    assert told(logs) == [
        ("health is not ok", "unavailable", None, None),
        ("health is ok again", None, None, None),
        ("health is not ok", "degraded", None, None),
    ]


def test_an_outage_of_another_kind_within_the_period_is_logged_by_name() -> None:
    """NATS_TIMEOUT (logged), ok, POSTGRES_TIMEOUT 20 s later, ok: the second outage's problem
    is logged at once, once; the same problem again within the period is counted. (Before,
    POSTGRES_TIMEOUT never appeared in the log: its outage began and ended in the period.)"""
    clock = Clock()
    health_log = HealthLog(PERIOD, clock=clock)
    with capture_logs() as logs:
        health_log.answered("unavailable", ["NATS_TIMEOUT"])
        clock.now += 1
        health_log.answered("ok", [])
        clock.now += 20
        health_log.answered("unavailable", ["POSTGRES_TIMEOUT"])
        clock.now += 1
        health_log.answered("ok", [])
        clock.now += 1
        health_log.answered("unavailable", ["POSTGRES_TIMEOUT"])  # told already: counted
        clock.now += 1
        health_log.answered("unavailable", ["NATS_TIMEOUT", "POSTGRES_TIMEOUT"])  # counted
    lines = [line for line in logs if line["event"].startswith("health is")]
    assert [(line["event"], line.get("problems")) for line in lines] == [
        ("health is not ok", ["NATS_TIMEOUT"]),
        ("health is not ok", ["POSTGRES_TIMEOUT"]),
    ], lines
    assert lines[1].get("since_last") == 1, lines[1]
    assert lines[1].get("flaps") == 1, lines[1]
