"""Our own close of a service connection is not a close for good: the process goes on.

Run in a child process, since a close taken for nats-py's own would end it with status 75."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from jobrunner.common.eventstore import NATS_CLOSED_EXIT
from tests.tools.runners import REPO

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import msgspec
    from jobrunner.common import eventstore
    from jobrunner.common.settings import Settings

    async def main() -> None:
        settings = msgspec.structs.replace(Settings(), nats_url=sys.argv[1])
        async with await eventstore.connect(settings, "test") as nc:
            await nc.flush()
        await asyncio.sleep(0.2)  # the closed callback runs after the close
        print("still alive")

    asyncio.run(main())
    """
)


def test_the_end_of_async_with_on_a_service_connection_does_not_end_the_process(
    nats_server_url: str,
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, nats_server_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode != NATS_CLOSED_EXIT, child.stdout + child.stderr
    assert child.returncode == 0 and "still alive" in child.stdout, child.stdout + child.stderr
