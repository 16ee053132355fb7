"""The ``jobrunner`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import structlog

from jobrunner.common import exitcodes, stallwatch
from jobrunner.common.logging import configure_logging
from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.settings import (
    Settings,
    SettingsError,
    capped_settings,
    ignored_service_links,
    load_settings,
    stray_variables,
)

if TYPE_CHECKING:  # asyncpg's import only for the commands that use Postgres
    import asyncpg

    from jobrunner.common.postgresconnect import PostgresUnusable, StatementCancelled


# The command-line flags that override settings: a refusal of one's value names the flag.
SETTING_FLAGS = {
    "host": "--host",
    "port": "--port",
    "state_dir": "--state-dir",
    "auth": "--no-auth",
}


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        flags=SETTING_FLAGS,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        state_dir=getattr(args, "state_dir", None),
        auth=False if getattr(args, "no_auth", False) else None,
    )


def _run_service(
    name: str,
    main: Callable[[Settings, asyncio.Event], Awaitable[None]],
    settings: Settings,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with stallwatch.watching():
            await main(settings, stop)

    # Every line of its log names it: under `jobrunner up` the four services write to one output.
    structlog.contextvars.bind_contextvars(service=name)
    with _metrics_listener(name, settings), asyncio.Runner(loop_factory=loop_factory) as loop:
        loop.run(runner())
    return 0


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """libuv's event loop where it is installed (as uvicorn picks it for the API), else None:
    asyncio's own. Its socket writes and reads cost a fraction of asyncio's Python transports."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@contextlib.contextmanager
def _metrics_listener(name: str, settings: Settings) -> Iterator[None]:
    """The service's own /metrics while it runs, when ``metrics_address`` names one."""
    if not settings.metrics_address:
        yield
        return
    from jobrunner.common.metricsexposition import MetricsListener

    listener = MetricsListener(name, settings.metrics_address)
    listener.start()
    try:
        yield
    finally:
        listener.stop()


def cmd_up(args: argparse.Namespace) -> int:
    from jobrunner.supervisor import up

    return asyncio.run(up(_settings(args), args.config))


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from jobrunner.services.api.app import create_app
    from jobrunner.services.api.context import requests_stop_seconds
    from jobrunner.services.api.httpprotocol import protocol_for

    settings = _settings(args)
    structlog.contextvars.bind_contextvars(service="api")
    with _metrics_listener("api", settings):
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            # uvicorn's httptools protocol, answering what its parser refuses with the API's
            # JSON errors and bounding a request's head.
            http=protocol_for(settings),
            log_level="warning",
            access_log=False,
            # uvicorn's records go to the root logger, written as every other line (JSON).
            log_config=None,
            # Part of the API's whole stop (stop_seconds); the lifespan's end has the rest.
            timeout_graceful_shutdown=requests_stop_seconds(settings),  # type: ignore[arg-type]
        )
    return 0


def cmd_runner(args: argparse.Namespace) -> int:
    from jobrunner.services.runner.service import run_runner

    return _run_service("runner", run_runner, _settings(args))


def cmd_projector(args: argparse.Namespace) -> int:
    from jobrunner.services.projector.service import run_projector

    # The projector's cost is per transaction as much as per event (a trickle of small ones is
    # mostly socket round trips to Postgres and NATS): on uvloop they cost less.
    return _run_service("projector", run_projector, _settings(args), _uvloop_factory())


def cmd_notifier(args: argparse.Namespace) -> int:
    from jobrunner.services.notifier.service import run_notifier

    return _run_service("notifier", run_notifier, _settings(args))


def cmd_events(args: argparse.Namespace) -> int:
    import os

    from jobrunner.common.eventlog import parse_since, print_events
    from jobrunner.common.runtime import with_runtime

    try:
        parse_since(args.since)
    except ValueError as exc:
        print(f"jobrunner: {exc}", file=sys.stderr)
        return 2
    settings = with_runtime(_settings(args), dict(os.environ))
    as_json = True if args.json else None
    try:
        return asyncio.run(
            print_events(settings, args.job, args.since, args.follow, as_json=as_json)
        )
    except BrokenPipeError:  # `jobrunner events | head`
        return 0


def _postgres_said_no(command: str, exc: PostgresUnusable | StatementCancelled) -> int:
    """A command's Postgres not answering or refusing, or cancelling its statement: its
    sentence, no traceback, and its exit code (69 not answering, 78 refusing, 5 cancelled)."""
    print(f"jobrunner {command}: {exc}", file=sys.stderr)
    return exc.exit_code


# Postgres' error of a kind no handler above names (an idle session's timeout, the database
# dropped, ...): its code and sentence, not a traceback; the command did not finish.
POSTGRES_ERROR_EXIT = 70  # EX_SOFTWARE


def _postgres_error(command: str, exc: asyncpg.PostgresError) -> int:
    """Postgres ended a command's work with an error of its own: one sentence with its
    SQLSTATE, no traceback."""
    print(
        f"jobrunner {command}: POSTGRES_ERROR: Postgres ended its work with "
        f"{type(exc).__name__} (SQLSTATE {exc.sqlstate}: {exc}); run it again once that "
        f"is dealt with",
        file=sys.stderr,
    )
    return POSTGRES_ERROR_EXIT


def _previous_left(why: str) -> None:
    """The swap committed: the replay (or rebuild) succeeded; only the old schema is left."""
    from jobrunner.services.projector.replay import PREVIOUS_LEFT

    print(f"jobrunner replay: warning: {PREVIOUS_LEFT} (its drop failed: {why})", file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    import os

    import asyncpg

    from jobrunner.common import postgresconnect
    from jobrunner.common.runtime import with_runtime
    from jobrunner.services.projector import upgrade
    from jobrunner.services.projector.replay import (
        Progress,
        ReplayMismatch,
        replay,
    )
    from jobrunner.services.projector.replaylock import (
        REPLAY_LOCK_LOST_EXIT,
        REPLAY_RUNNING_EXIT,
        ReplayLockLost,
        ReplayRunning,
    )

    settings = with_runtime(_settings(args), dict(os.environ))
    # Postgres not answering or refusing: one sentence and an exit code, within a bound (the
    # first connect below would wait asyncpg's 60 s on a frozen one, then end in a traceback).
    # A Postgres frozen, stopped or refusing after this check is said the same way at the
    # connect that meets it (each bounded: postgresconnect.CHECK_CONNECT_SECONDS).
    try:
        asyncio.run(postgresconnect.check_answers(settings.database_url))
    except postgresconnect.PostgresUnusable as exc:
        return _postgres_said_no("replay", exc)

    def show(progress: Progress) -> None:
        if progress.phase == "indexing":
            print("replay: all events loaded; building indexes ...", file=sys.stderr, flush=True)
            return
        if progress.phase in ("swapping", "done"):
            return
        if progress.phase == "comparing":
            print(
                "replay: comparing with the live read models (the live projector waits) ...",
                file=sys.stderr,
                flush=True,
            )
            return
        left = progress.seconds_left
        eta = f"{left:.0f} s left" if left is not None else "..."
        print(
            f"replay: {progress.done} events ({progress.done + progress.first_seq - 1}"
            f"/{progress.target}), {progress.rate:,.0f} events/s, {eta}",
            file=sys.stderr,
            flush=True,
        )

    # Read models older than this jobrunner cannot be compared with rebuilt ones: they are
    # rebuilt and swapped in without a comparison (this is the command a projector that may not
    # rebuild them names).
    # One handler for both steps: each meets the same failures of Postgres and of the lock.
    try:
        outcome = asyncio.run(
            upgrade.ensure_current(settings, allow_rebuild=True, on_progress=show)
        )
        report = (
            None
            if outcome.rebuilt
            else asyncio.run(
                replay(
                    settings,
                    on_progress=show,
                    keep_previous=args.keep_previous,
                    accept_differences=args.accept_differences,
                )
            )
        )
    except ReplayMismatch as exc:
        print(f"jobrunner replay: {exc}", file=sys.stderr)
        for table, keys in exc.differences.items():
            for key in keys:
                print(f"  {table}: {key}", file=sys.stderr)
        return 3
    except ReplayLockLost as exc:
        print(f"jobrunner replay: {exc}", file=sys.stderr)
        return REPLAY_LOCK_LOST_EXIT
    except ReplayRunning as exc:
        print(f"jobrunner replay: {exc}", file=sys.stderr)
        return REPLAY_RUNNING_EXIT
    # Postgres went away during the rebuild or the replay, or cancelled its statement.
    except (postgresconnect.PostgresUnusable, postgresconnect.StatementCancelled) as exc:
        return _postgres_said_no("replay", exc)
    except postgresconnect.COMMAND_CONNECT_ERRORS as exc:
        return _postgres_said_no("replay", postgresconnect.unusable(exc, settings.database_url))
    except asyncpg.PostgresError as exc:
        return _postgres_error("replay", exc)
    if report is None:
        if outcome.previous_left is not None:
            _previous_left(outcome.previous_left)
        print(
            f"replay: the read models were older than this jobrunner; rebuilt from "
            f"{outcome.events} events (to sequence {outcome.checkpoint}) and swapped in.",
            flush=True,
        )
        return 0
    if report.previous_left is not None:
        _previous_left(report.previous_left)
    rows = ", ".join(f"{n} {table}" for table, n in report.tables.items())
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.phases.items())
    verdict = (
        "identical to the live read models"
        if not report.differences
        else f"DIFFERENT from the live ones (accepted): {report.differences}"
    )
    print(
        f"replay: rebuilt {rows} from {report.events} events (sequence {report.first_seq} to "
        f"{report.checkpoint}) in {report.seconds:.1f} s, {report.rate:,.0f} events/s "
        f"({phases}); the rebuilt tables are {verdict}; swapped in.",
        flush=True,
    )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from jobrunner.contracts.jsonschema import event_schema

    print(json.dumps(event_schema(), indent=2))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from jobrunner.common.runtime import with_runtime
    from jobrunner.token_command import main

    return main(with_runtime(_settings(args), {}), args)


def cmd_lock(args: argparse.Namespace) -> int:
    from jobrunner.common.runtime import with_runtime
    from jobrunner.lock_command import main

    return main(with_runtime(_settings(args), {}), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobrunner",
        description="Run command-line jobs from a browser or an HTTP API and watch them live.",
    )
    parser.add_argument("--config", help="config file (TOML); also JOBRUNNER_CONFIG")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "up",
        help="start everything: embedded NATS and Postgres, api, runner, projector, notifier",
    )
    p.add_argument("--host", help="address the web UI and API listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port of the web UI and API (default 8000)")
    p.add_argument(
        "--state-dir", help="where NATS and Postgres keep their data (default ./.jobrunner)"
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="no tokens at all (allowed only when --host is a loopback address)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("api", help="run the HTTP API and web UI")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_api)
    sub.add_parser("runner", help="run a runner").set_defaults(func=cmd_runner)
    sub.add_parser("projector", help="run the projector").set_defaults(func=cmd_projector)
    sub.add_parser("notifier", help="run a notifier (delivers webhooks)").set_defaults(
        func=cmd_notifier
    )

    from jobrunner.token_command import add_parser as add_token_parser

    add_token_parser(sub)
    sub.choices["token"].set_defaults(func=cmd_token)

    from jobrunner.lock_command import add_parser as add_lock_parser

    add_lock_parser(sub)
    sub.choices["lock"].set_defaults(func=cmd_lock)

    p = sub.add_parser(
        "events",
        help="print the raw event history from JetStream (JSON lines; readable on a terminal)",
        description="Finds NATS from the settings, else from <state_dir>/runtime.json of a "
        "running `jobrunner up`.",
    )
    p.add_argument("--job", help="only this job's events")
    p.add_argument(
        "--since", help="a stream sequence (1234), an ISO 8601 time, or an age (15m, 2h, 1d)"
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    p.add_argument("--state-dir", help="where `jobrunner up` keeps its runtime.json")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser(
        "replay",
        help="rebuild every read model from the event stream and swap it in while running",
    )
    p.add_argument(
        "--keep-previous",
        action="store_true",
        help="keep the replaced tables in schema readmodel_previous",
    )
    p.add_argument(
        "--accept-differences",
        action="store_true",
        help="swap in even if the rebuilt tables differ from the live ones",
    )
    p.add_argument("--state-dir", help="where `jobrunner up` keeps its runtime.json")
    p.set_defaults(func=cmd_replay)

    from jobrunner.terminal.commands import add_commands

    add_commands(sub)

    p = sub.add_parser("schema", help="print a public contract as JSON Schema")
    p.add_argument("what", choices=["events"], help="events: every event on the stream")
    p.set_defaults(func=cmd_schema)
    _config_after_command_too(parser)
    return parser


def _config_after_command_too(parser: argparse.ArgumentParser) -> None:
    """``--config`` works before the command and after it (``jobrunner up --config F``).

    In a subcommand it defaults to SUPPRESS, so that an absent one keeps the value given before
    the command instead of resetting it to None."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                if "--config" not in command._option_string_actions:
                    command.add_argument(
                        "--config",
                        default=argparse.SUPPRESS,
                        help="config file (TOML); also JOBRUNNER_CONFIG",
                    )
                _config_after_command_too(command)


# The commands that run on the settings: a stray JOBRUNNER_ variable (a typo of one) stops them.
# The others (the terminal client, `schema`) load the settings too but do not run on them: for
# them it is only told.
SETTINGS_COMMANDS = frozenset(
    {"up", "api", "runner", "projector", "notifier", "replay", "events", "token", "lock"}
)


def _check_environment(command: str) -> None:
    """A ``JOBRUNNER_`` variable that is no setting and no other part's (a typo): refused by a
    command that runs on the settings, as a typo in the config file is; else a warning."""
    stray = stray_variables(os.environ)
    if stray and command in SETTINGS_COMMANDS:
        sentences = " ".join(s if s.endswith("?") else f"{s}." for s in stray)
        raise SettingsError(
            f"{sentences} (A variable no part of jobrunner reads stops a service: remove or "
            "rename it.)"
        )
    for sentence in stray:
        print(f"jobrunner: warning: {sentence}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_environment(args.command)
        settings = _settings(args)
        # Here, once: each command loads the settings again.
        for sentence in ignored_service_links(os.environ, settings) + capped_settings(settings):
            print(f"jobrunner: warning: {sentence}", file=sys.stderr)
        # A NATS setting no part can honour (a TLS file, a seed, a URL scheme) stops every
        # command here with one line, before any service starts.
        NatsConnection.from_settings(settings)
    except SettingsError as exc:
        # EX_CONFIG: unchanged, it would only refuse again (`jobrunner up` does not restart a
        # service that exits so); 2 is argparse's, and `jobrunner health`'s "unavailable".
        print(f"jobrunner: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    configure_logging(settings.log_level, settings.log_format)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a start-up failure: one readable line, not a traceback
        import nats.errors

        from jobrunner.common.jobtypes import JobTypeConfigError
        from jobrunner.common.refusal import REFUSED_EXIT, StateRefused
        from jobrunner.common.runtime import RuntimeFileRefused
        from jobrunner.embedded.serverprocess import ServerStartError

        if isinstance(exc, StateRefused):
            print(f"jobrunner: {exc}", file=sys.stderr)
            return REFUSED_EXIT
        if isinstance(exc, RuntimeFileRefused):
            print(f"jobrunner: {exc}", file=sys.stderr)
            return exitcodes.CONFIG
        if isinstance(exc, nats.errors.ConnectionClosedError):
            print(
                "jobrunner: the NATS server closed the connection for good "
                "(the reason is in the log line above); try the command again",
                file=sys.stderr,
            )
            return 1
        if isinstance(exc, ServerStartError | JobTypeConfigError | SettingsError):
            print(f"jobrunner: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
