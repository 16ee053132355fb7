"""``jobrunner replay`` with its lines loaded by the helper process however short the stream (the
settings from the environment, as the command reads them): a replay a fault test can SIGKILL
while its helper loads."""

from __future__ import annotations

import asyncio

from jobrunner.common.settings import load_settings
from jobrunner.services.projector import replay


def main() -> None:
    replay.SPLIT_MIN_EVENTS = 1
    asyncio.run(replay.replay(load_settings()))


if __name__ == "__main__":
    main()
