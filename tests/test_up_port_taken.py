"""`jobrunner up` checks that its port is free before it starts its servers; another program may
take the port after that check, before the API listens. `up` must then stop, saying so, rather
than announce that program as jobrunner (before session 35 any 200 from /health would do)."""

from __future__ import annotations

import re

import pytest

from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from tests.freeze import freeze, thaw
from tests.tools.stranger_server import stranger_on
from tests.tools.up_process import URL_RE, Up

# Logged once the preflight (the port's check among them) has passed, before the API starts.
PREFLIGHT_PASSED = re.compile(r"starting embedded servers")
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
