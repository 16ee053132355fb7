"""What the one-shot commands that talk to a running jobrunner share (``jobrunner token``,
``jobrunner lock``): their NATS connection and their command line's shape."""

from __future__ import annotations

import argparse

import nats
from nats.aio.client import Client

from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.settings import Settings


async def connect(settings: Settings, name: str) -> Client:
    """NATS for one command. Not eventstore.connect(): a one-shot command fails fast instead of
    reconnecting forever."""
    return await nats.connect(
        **NatsConnection.from_settings(settings).nats_py_options(),
        name=name,
        max_reconnect_attempts=1,
    )


def add_command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help: str,
) -> tuple[argparse._SubParsersAction, argparse.ArgumentParser]:  # type: ignore[type-arg]
    """``jobrunner <name> <subcommand>``: its subcommands (``<name>_command`` names the one
    given) and the parent parser each takes its common options from."""
    p = sub.add_parser(
        name,
        help=help,
        description="Finds NATS from the settings, else from <state_dir>/runtime.json of a "
        "running `jobrunner up`.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="where `jobrunner up` keeps its runtime.json")
    return p.add_subparsers(dest=f"{name}_command", required=True), common
