"""`jobrunner up` stops, instead of restarting a service, when the service refused the stored state
(exit code 78): a restart would only refuse again."""

from __future__ import annotations

import asyncio
import sys

import pytest

from jobrunner.common.refusal import REFUSED_EXIT
from jobrunner.embedded.serverprocess import free_port
from jobrunner.supervisor import Service, _supervise, run_until_stopped, wait_healthy
from tests.tools.stranger_server import stranger_on


async def exited_with(code: int, name: str = "projector") -> Service:
    service = Service(name, {})
    service.proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"raise SystemExit({code})"
    )
    await service.proc.wait()
    return service


async def test_a_service_that_refused_stops_the_supervisor() -> None:
    """A service exiting 78 ends the supervision with a sentence naming it, not a restart."""
    refused = await exited_with(REFUSED_EXIT)
    with pytest.raises(RuntimeError, match="the projector refused to start; jobrunner stops"):
        await asyncio.wait_for(_supervise({"projector": refused}, asyncio.Event()), 10)
    assert refused.restarts == 0


async def test_a_service_that_refused_during_start_up_stops_the_wait_for_health() -> None:
    """While `jobrunner up` waits for the API's health, a service that refused ends the wait at
    once instead of after the health timeout."""
    api = Service("api", {})
    refused = await exited_with(REFUSED_EXIT)
    with pytest.raises(RuntimeError, match="the projector refused to start"):
        # Nothing listens there: only the refusal can end the wait before its timeout.
        await wait_healthy("127.0.0.1", 9, "ours", api, timeout=30, others=(api, refused))


async def running(name: str, code: str) -> Service:
    service = Service(name, {})
    service.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    return service


async def test_a_refusal_during_the_wait_for_the_start_ends_up_and_cancels_the_wait() -> None:
    """`up`'s supervision and its wait for every service's start run side by side
    (``run_until_stopped``): a service that refuses during a long wait ends both at once, with
    the refusal's sentence; the wait is cancelled and no task of either is left behind."""
    api = await running("api", "import time; time.sleep(60)")
    projector = await running(
        "projector", f"import time; time.sleep(0.5); raise SystemExit({REFUSED_EXIT})"
    )
    announce_cancelled = asyncio.Event()
    # The session's loop runs other tests' tasks too (a browser's transport): only the tasks
    # made from here on are this test's to account for.
    others = asyncio.all_tasks()

    async def long_announce() -> None:
        try:
            await asyncio.sleep(3600)  # a projector still starting, up_ready_timeout_seconds
        except asyncio.CancelledError:
            announce_cancelled.set()
            raise

    try:
        with pytest.raises(RuntimeError, match="the projector refused to start; jobrunner stops"):
            await asyncio.wait_for(
                run_until_stopped(
                    {"api": api, "projector": projector}, asyncio.Event(), long_announce()
                ),
                30,
            )
        assert announce_cancelled.is_set()
        assert projector.restarts == 0
        assert asyncio.all_tasks() - others == set(), "a task of the supervision is left"
    finally:
        assert api.proc is not None
        api.proc.kill()
        await api.proc.wait()


async def test_a_refusal_while_the_api_waits_for_its_taken_port_stops_the_supervisor() -> None:
    """The API crashed and another program holds its port, so its restart waits: a service
    refusing meanwhile still ends the supervision at once, instead of going unnoticed until
    the port is free."""
    with stranger_on(free_port()) as stranger:
        port = stranger.server_address[1]
        api = Service("api", {"JOBRUNNER_HOST": "127.0.0.1", "JOBRUNNER_PORT": str(port)})
        api.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(1)")
        # Refuses once told to (its stdin closed): after the API's restart has begun to wait.
        projector = Service("projector", {})
        projector.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            f"import sys; sys.stdin.read(); raise SystemExit({REFUSED_EXIT})",
            stdin=asyncio.subprocess.PIPE,
        )
        supervising = asyncio.create_task(
            _supervise({"api": api, "projector": projector}, asyncio.Event())
        )
        try:
            while api.restarts == 0:  # noqa: ASYNC110 - set by the supervision's loop
                await asyncio.sleep(0.05)
            assert projector.proc.stdin is not None
            projector.proc.stdin.close()
            with pytest.raises(
                RuntimeError, match="the projector refused to start; jobrunner stops"
            ):
                await asyncio.wait_for(supervising, 60)
        finally:
            supervising.cancel()
            await asyncio.gather(supervising, return_exceptions=True)
        assert api.proc.returncode == 1, "the api was restarted into a taken port"


async def test_a_stop_while_the_api_waits_for_its_taken_port_cancels_its_restart() -> None:
    """`up` stopped while its API's restart waits for a port another program holds: the
    supervision ends, the API is not started, and no task of the pending restart is left."""
    others = asyncio.all_tasks()
    with stranger_on(free_port()) as stranger:
        port = stranger.server_address[1]
        api = Service("api", {"JOBRUNNER_HOST": "127.0.0.1", "JOBRUNNER_PORT": str(port)})
        api.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(1)")
        exited = api.proc
        stop = asyncio.Event()
        supervising = asyncio.create_task(_supervise({"api": api}, stop))
        while api.restarts == 0:  # noqa: ASYNC110 - set by the supervision's loop
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(supervising, 30)
    assert api.proc is exited, "the api was started after the stop"
    assert asyncio.all_tasks() - others == set(), "a task of the pending restart is left"
