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
        async with await eventstore.connect(settings, "test", on_closed_for_good="exit") as nc:
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
    assert child.returncode == 0, child.stdout + child.stderr
    assert "still alive" in child.stdout


# Connects with the mode given, has the server close the connection for good (a subject over its
# 4 KiB control line limit: `-ERR 'Maximum Control Line Exceeded'`), then uses it.
CLOSED_BY_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    import msgspec, nats.errors
    from jobrunner.common import eventstore
    from jobrunner.common.settings import Settings

    async def main() -> None:
        settings = msgspec.structs.replace(Settings(), nats_url=sys.argv[1])
        nc = await eventstore.connect(settings, "test", on_closed_for_good=sys.argv[2])
        try:
            await nc.publish("a" * 5000, b"")
            async with asyncio.timeout(10):
                while not nc.is_closed:  # noqa: ASYNC110 - nats-py sets the state, nothing to await
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the closed callback runs after the close
            try:
                await nc.flush()
            except nats.errors.ConnectionClosedError:
                print("raised")
        finally:
            print("finally ran")

    asyncio.run(main())
    """
)


def _closed_by_server(nats_server_url: str, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLOSED_BY_SERVER, nats_server_url, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_command_whose_connection_the_server_closed_raises_and_runs_its_finally(
    nats_server_url: str,
) -> None:
    child = _closed_by_server(nats_server_url, "raise")
    assert child.returncode == 0, child.stdout + child.stderr
    printed = child.stdout.splitlines()
    assert printed[-2:] == ["raised", "finally ran"], child.stdout + child.stderr
    assert "nats connection closed for good" in child.stdout + child.stderr


def test_a_service_whose_connection_the_server_closed_exits_75(nats_server_url: str) -> None:
    child = _closed_by_server(nats_server_url, "exit")
    assert child.returncode == NATS_CLOSED_EXIT, child.stdout + child.stderr
    assert "finally ran" not in child.stdout
    assert "exiting so that the service is restarted" in child.stdout + child.stderr
