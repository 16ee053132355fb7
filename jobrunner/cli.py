"""The ``jobrunner`` command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from jobrunner.logging import configure_logging
from jobrunner.settings import Settings, SettingsError, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        state_dir=getattr(args, "state_dir", None),
    )


def _run_service(
    main: Callable[[Settings, asyncio.Event], Awaitable[None]], settings: Settings
) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(settings, stop)

    asyncio.run(runner())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from jobrunner.supervisor import up

    return asyncio.run(up(_settings(args), args.config))


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from services.api.app import create_app

    settings = _settings(args)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_runner(args: argparse.Namespace) -> int:
    from services.runner.service import run_runner

    return _run_service(run_runner, _settings(args))


def cmd_projector(args: argparse.Namespace) -> int:
    from services.projector.service import run_projector

    return _run_service(run_projector, _settings(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobrunner",
        description="Run command-line jobs from a browser or an HTTP API and watch them live.",
    )
    parser.add_argument("--config", help="config file (TOML); also JOBRUNNER_CONFIG")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "up", help="start everything: embedded NATS and Postgres, api, runner, projector"
    )
    p.add_argument("--host", help="address the web UI and API listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port of the web UI and API (default 8000)")
    p.add_argument(
        "--state-dir", help="where NATS and Postgres keep their data (default ./.jobrunner)"
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("api", help="run the HTTP API and web UI")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_api)
    sub.add_parser("runner", help="run a runner").set_defaults(func=cmd_runner)
    sub.add_parser("projector", help="run the projector").set_defaults(func=cmd_projector)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"jobrunner: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a start-up failure: one readable line, not a traceback
        from jobrunner.embedded.serverprocess import ServerStartError
        from jobrunner.jobtypes import JobTypeConfigError

        if isinstance(exc, ServerStartError | JobTypeConfigError | SettingsError):
            print(f"jobrunner: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
