"""`jobrunner up` checks that its port is free before it starts its servers; another program may
take the port after that check, before the API listens. `up` must then stop, saying so, rather
than announce that program as jobrunner (before session 35 any 200 from /health would do).
Another program may also take the port while a crashed API is down: `up` then says so and
restarts its API once the port is free (before session 36 the API died "address in use" at
every restart, and `up` said nothing of why)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal

import pytest

from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from tests.freeze import freeze, thaw
from tests.tools.api_address import ApiAddress
from tests.tools.stranger_server import stranger_on, wait_port_free
from tests.tools.up_process import URL_RE, Up, restarted, services_of

# Logged once the preflight (the port's check among them) has passed, before the API starts.
PREFLIGHT_PASSED = re.compile(r"starting embedded servers")
# `up`'s log line for each start of its API (JSON: the service's name, then the event).
API_STARTED = re.compile(r'"service": "api", "pid": \d+, "event": "service started"')
# The start's end, either way: refused (what the test wants) or announced (what it must not be).
START_ENDED = re.compile(rf"does not answer as this jobrunner's API|{URL_RE.pattern}")


@pytest.mark.timeout(600)
def test_up_stops_naming_the_port_another_program_took_during_its_start() -> None:
    """Another program takes the port between `up`'s check of it and the API's start, and
    answers /health with 200: `up` exits 1 with a sentence naming the port, never saying it
    runs there."""
    port = free_port()
    with scratch_dir("jobrunner-test-up-port-") as state_dir:
        up = Up(state_dir, port)
        try:
            up.wait_for(PREFLIGHT_PASSED)
            freeze(up.proc.pid)  # its API not started yet: the stranger is surely first
            with stranger_on(port, 200, b'{"status": "ok"}'):
                thaw(up.proc.pid)
                up.wait_for(START_ENDED, 180)  # "running at" fails at once, not when up ends
                assert not URL_RE.search(up.output), up.output
                code = up.proc.wait(180)
        finally:
            if up.proc.poll() is None:
                up.stop()
    assert code == 1, up.output
    assert f"port {port} does not answer as this jobrunner's API" in up.output, up.output
    assert not URL_RE.search(up.output), up.output


def comes_back(address: ApiAddress, within: float = 120) -> bool:
    """Whether our API answers /health at ``address`` within ``within`` s (another program's
    answer there raises NotOurApi, naming it)."""

    async def answering() -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while not await address.answers():  # noqa: ASYNC110 - an HTTP poll
                    await asyncio.sleep(0.2)
                return True
        return False

    return asyncio.run(answering())


@pytest.mark.timeout(600)
def test_up_names_the_port_a_stranger_took_from_its_crashed_api_and_restarts_it_once_freed() -> (
    None
):
    """The API crashes and another program takes its port before `up` restarts it: `up` says
    once which port is taken and what to do, keeps running (a runner killed meanwhile is
    restarted at once, not after the port is free), and brings its API back on the port once
    the other program has left it."""
    port = free_port()
    instance = "up-port-taken-api"
    taken = re.compile(
        rf"the api cannot be restarted: port {port} on 127.0.0.1 is already in use "
        r"\(another jobrunner, or another program\): stop it, or choose another port with --port"
    )
    with scratch_dir("jobrunner-test-up-port-") as state_dir:
        up = Up(state_dir, port, api_instance_id=instance)
        try:
            up.wait_for(URL_RE, 300)
            with contextlib.ExitStack() as stranger:
                freeze(up.proc.pid)  # no restart of the API before the stranger is there
                try:
                    api = int(services_of(up.proc.pid)["api"])
                    os.kill(api, signal.SIGKILL)
                    wait_port_free(port)
                    stranger.enter_context(stranger_on(port, 200, b'{"status": "ok"}'))
                finally:
                    thaw(up.proc.pid)
                up.wait_for(taken, 120)
                assert up.proc.poll() is None, up.output
                # While its API waits for the port, `up` still watches the other services.
                runner = services_of(up.proc.pid)["runner"]
                os.kill(int(runner), signal.SIGKILL)
                assert restarted(up.proc.pid, "runner", runner), (
                    f"the runner was not restarted while the port was taken:\n{up.output}"
                )
            assert comes_back(ApiAddress(port, instance)), (
                f"the api did not come back:\n{up.output}"
            )
            freed = f"port {port} is free again: the api restarts"
            assert freed in up.output, up.output
            assert len(taken.findall(up.output)) == 1, up.output
            # While the port was taken, no API was started into it (to die "address in use").
            said = taken.search(up.output)
            assert said is not None
            assert not API_STARTED.search(up.output[said.end() : up.output.index(freed)]), up.output
        finally:
            code = up.stop()
    assert code == 0, up.output
