"""Logging: what a crash's traceback may show."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from jobrunner.common.logging import configure_logging
from tests.tools.logging_state import logging_put_back


@pytest.fixture
def console_logging() -> Iterator[None]:
    with logging_put_back():
        configure_logging("info", "console")
        yield


def test_console_traceback_never_shows_local_variables(
    console_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash logged on a terminal shows where it happened, not the secrets its frames held."""
    configure_logging("info", "console")  # binds the captured stderr
    # Built at run time: the traceback shows source lines, which must not be what gives it away.
    webhook_secret = "-".join(["s3cret", "value", "in", "a", "local"])
    try:
        raise RuntimeError(f"boom {len(webhook_secret)}")
    except RuntimeError:
        structlog.get_logger().exception("crashed")
    err = capsys.readouterr().err
    assert "RuntimeError" in err
    assert "s3cret-value-in-a-local" not in err
