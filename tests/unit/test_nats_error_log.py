"""nats-py's errors of one connection are logged at most once per interval, with a count."""

from __future__ import annotations

from structlog.testing import capture_logs

from jobrunner.common.eventstore import ErrorLog


def test_errors_within_the_interval_are_counted_into_the_next_line() -> None:
    errors = ErrorLog("api", interval=3600.0)
    with capture_logs() as logs:
        for _ in range(40):  # 10 s of a refused connect, tried 4 times a second
            errors(ConnectionRefusedError("refused"))
        errors.throttle.last_logged -= 3600.0  # the interval has passed
        errors(TimeoutError())
    assert [(line["event"], line.get("since_last")) for line in logs] == [
        ("nats error", None),
        ("nats error", 39),
    ]
    assert logs[1]["error"] == "TimeoutError"
