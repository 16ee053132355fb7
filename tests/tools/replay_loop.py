"""A test tool: ``jobrunner replay`` as the command runs it (``cli.main``), printing first the
class of the event loop each of its replay and rebuild steps ran on ("replay loop: <module.Class>")."""

import asyncio
import sys
from typing import Any

from jobrunner import cli
from jobrunner.services.projector import replay, upgrade


def recording_the_loop(name: str, step: Any) -> Any:
    async def recorded(*args: Any, **kwargs: Any) -> Any:
        loop = type(asyncio.get_running_loop())
        print(f"{name} loop: {loop.__module__}.{loop.__qualname__}", flush=True)
        return await step(*args, **kwargs)

    return recorded


replay.replay = recording_the_loop("replay", replay.replay)
upgrade.ensure_current = recording_the_loop("rebuild", upgrade.ensure_current)
sys.exit(cli.main(["replay", *sys.argv[1:]]))
