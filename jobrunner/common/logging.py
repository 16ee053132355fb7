"""structlog set-up shared by every service: JSON off a terminal, pretty on one.

The libraries' standard-library loggers (uvicorn, httpx, asyncio, litestar) go through the same
renderer, so every line a service writes has one format (the README's `log_format` setting)."""

from __future__ import annotations

import importlib.util
import logging
import math
import ssl
import sys
import time

import structlog

from jobrunner.common import postgresconnect

# Libraries whose INFO lines are one per request they make (each /metrics scrape of a peer):
# noise beside the services' own lines, so only their warnings are written.
CHATTY_LIBRARIES = ("httpx", "httpcore")

# What a Postgres that is down, restarting or shutting down raises at a connect: expected faults,
# each retried by whoever met it. A bare OSError is one here (a refused or timed-out connect;
# database.PostgresUnreachable is one too), unlike in the API's errors.POSTGRES_AWAY, which
# judges any error of a request. The connect's errors that may pass, as the services' starts
# wait them out (postgresconnect.PASSING_CONNECT_ERRORS): not a statement cancelled, which no
# connect meets and which keeps its traceback.
POSTGRES_AWAY_AT_CONNECT = postgresconnect.PASSING_CONNECT_ERRORS
# OSErrors that are the installation's own mistakes, not a Postgres away (a certificate that does
# not verify, a certificate or socket file that is missing or unreadable): the retries will not
# mend them, and their traceback says where to look.
CONFIG_ERRORS_AT_CONNECT = (ssl.SSLCertVerificationError, FileNotFoundError, PermissionError)


class PostgresAwayInOneLine(logging.Filter):
    """asyncpg's pool logs each failed attempt to reopen its minimum of connections with a whole
    traceback ("Failed to restore the pool connection floor; retrying", once a second, then
    backing off to a minute): a dozen tracebacks for a 30 s Postgres restart, for a fault the
    pool retries by itself. Postgres away is said in one line, with the error; anything else
    keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, POSTGRES_AWAY_AT_CONNECT) and not isinstance(
            error, CONFIG_ERRORS_AT_CONNECT
        ):
            said = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            record.msg = f"{record.getMessage()} (Postgres away: {said})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


# Each logger is bound to the configured output on its first use, for speed. A test that
# configures logging in-process turns this off (tests/tools/logging_state.py): a logger bound
# to its captured stderr would write to a closed file in the next test.
CACHE_LOGGERS = True


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else console_renderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=CACHE_LOGGERS,
    )
    route_stdlib_logging(shared, renderer, threshold)


def route_stdlib_logging(
    shared: list[structlog.typing.Processor], renderer: structlog.typing.Processor, threshold: int
) -> None:
    """One root handler rendering standard-library records as structlog renders its own events
    (with the logger's name), replacing any handler set before."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(threshold, logging.WARNING))
    pool_logger = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, PostgresAwayInOneLine) for f in pool_logger.filters):
        pool_logger.addFilter(PostgresAwayInOneLine())


def console_renderer() -> structlog.dev.ConsoleRenderer:
    """Pretty lines, and tracebacks without local variables: a frame's locals hold the settings
    (NATS password, webhook secret) and webhook headers, none of which may reach a log."""
    formatter: structlog.typing.ExceptionRenderer = structlog.dev.plain_traceback
    if importlib.util.find_spec("rich") is not None:
        formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
    return structlog.dev.ConsoleRenderer(exception_formatter=formatter)


class LogThrottle:
    """At most one line per ``interval`` seconds for one kind of repeated warning (one per
    request or per retry while a server is away), counting the ones left out in between."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last_logged = -math.inf
        self.left_out = 0

    def admit(self) -> int | None:
        """None: leave this line out. Otherwise log it, with this many left out since the last
        (0: none)."""
        now = time.monotonic()
        if now - self.last_logged < self.interval:
            self.left_out += 1
            return None
        left_out, self.left_out, self.last_logged = self.left_out, 0, now
        return left_out
