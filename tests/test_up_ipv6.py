"""`jobrunner up --host ::1`: the start waits for its API on IPv6 loopback and announces a URL a
browser can open there (the address in brackets). Before session 35 the announced URL was
``http://::1:PORT/jobs``, which no client can parse."""

from __future__ import annotations

import json

import httpx
import pytest

from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from tests.tools.up_process import URL_RE, Up


@pytest.mark.timeout(600)
def test_up_on_ipv6_loopback_announces_a_bracketed_url_that_answers() -> None:
    """`up` on ::1 prints http://[::1]:PORT/jobs, records that address for the other commands,
    and its API answers there."""
    port = free_port()
    with scratch_dir("jobrunner-test-up-ipv6-") as state_dir:
        up = Up(state_dir, port, host="::1", auth="false")
        try:
            url = up.wait_for(URL_RE, 180).group(1)
            assert url == f"http://[::1]:{port}", up.output
            recorded = json.loads((state_dir / "runtime.json").read_text())["api_url"]
            assert recorded == url
            assert httpx.get(f"{url}/health", timeout=30).json()["status"] in ("ok", "degraded")
        finally:
            up.stop()
