"""Logging: what a crash's traceback may show."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from jobrunner.common.logging import CHATTY_LIBRARIES, configure_logging


@pytest.fixture
def console_logging() -> Iterator[None]:
    # configure_logging replaces the root logger's handlers (with one on this test's captured
    # stderr, closed after it): the next tests' library records must not be written there.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in CHATTY_LIBRARIES}
    configure_logging("info", "console")
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in chatty.items():
        logging.getLogger(name).setLevel(was)


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
