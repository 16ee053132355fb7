"""structlog set-up shared by every service: JSON off a terminal, pretty on one.

The libraries' standard-library loggers (uvicorn, httpx, asyncio, litestar) go through the same
renderer, so every line a service writes has one format (the README's `log_format` setting)."""

from __future__ import annotations

import importlib.util
import logging
import sys

import structlog

# Libraries whose INFO lines are one per request they make (each /metrics scrape of a peer):
# noise beside the services' own lines, so only their warnings are written.
CHATTY_LIBRARIES = ("httpx", "httpcore")


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
        cache_logger_on_first_use=True,
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


def console_renderer() -> structlog.dev.ConsoleRenderer:
    """Pretty lines, and tracebacks without local variables: a frame's locals hold the settings
    (NATS password, webhook secret) and webhook headers, none of which may reach a log."""
    formatter: structlog.typing.ExceptionRenderer = structlog.dev.plain_traceback
    if importlib.util.find_spec("rich") is not None:
        formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
    return structlog.dev.ConsoleRenderer(exception_formatter=formatter)
