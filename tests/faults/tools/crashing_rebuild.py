"""A projector's rebuild of older read models that SIGKILLs itself after it applied a first batch
of events but not all of them: a real crash at a point no outside timing could hit for sure."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from jobrunner.common.settings import load_settings
from jobrunner.services.projector import upgrade
from jobrunner.services.projector.replay import Progress


def main() -> None:
    def on_progress(progress: Progress) -> None:
        total = progress.target - progress.first_seq + 1
        if progress.phase == "loading" and 0 < progress.done < total:
            os.kill(os.getpid(), signal.SIGKILL)

    rebuild = upgrade.ensure_current(load_settings(), on_progress=on_progress, progress_interval=0)
    asyncio.run(rebuild)
    sys.exit("the rebuild ended without reaching the point to crash at")


if __name__ == "__main__":
    main()
