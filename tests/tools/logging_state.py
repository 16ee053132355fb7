"""What ``configure_logging`` changes in the process, put back after a test that calls it: the
root logger's handlers (one may write to the test's captured stderr, closed after it) and level,
the quieted libraries' levels, asyncpg's pool logger's filters and structlog's configuration."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from jobrunner.common import logging as jobrunner_logging
from jobrunner.common.logging import CHATTY_LIBRARIES


@contextmanager
def logging_put_back() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in CHATTY_LIBRARIES}
    pool_logger = logging.getLogger("asyncpg.pool")
    filters = pool_logger.filters[:]
    # No logger may keep this test's captured stderr once it is closed.
    jobrunner_logging.CACHE_LOGGERS = False
    try:
        yield
    finally:
        jobrunner_logging.CACHE_LOGGERS = True
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in chatty.items():
            logging.getLogger(name).setLevel(was)
        pool_logger.filters[:] = filters
