"""`jobrunner up` on an older jobrunner's state directory (README "Upgrading"); the refusal of a
newer one is in tests/test_upgrade.py and tests/test_supervisor_refusal.py."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats, load_or_create_secret
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from tests.tools.up_process import TOKEN_RE, URL_RE, Up
from tests.upgrade_support import older_state

T = TypeVar("T")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root, Postgres runs as 'postgres', who must reach it.
    with scratch_dir("jobrunner-test-upgrade-") as path:
        yield path


def with_servers_of(state: Path, work: Callable[[Settings], Awaitable[T]]) -> T:
    """Start the state directory's own NATS and Postgres as `jobrunner up` would, run ``work``
    (an async function of the settings) against them, stop them."""
    nats_server = EmbeddedNats(
        state / "nats", user="jobrunner", password=load_or_create_secret(state / "nats-password")
    )
    postgres = EmbeddedPostgres(state / "postgres" / "data")
    nats_server.start()
    try:
        postgres.start()
        try:
            settings = Settings(nats_url=nats_server.url, database_url=postgres.url)
            return asyncio.run(work(settings))  # type: ignore[arg-type]  # a coroutine
        finally:
            postgres.stop()
    finally:
        nats_server.stop()


@pytest.mark.timeout(300)
def test_up_on_an_older_state_directory_rebuilds_the_read_models(state_dir: Path) -> None:
    """`jobrunner up` on a state directory whose read models an older jobrunner wrote rebuilds
    them from its event stream (progress in the log) and then serves every job as the events say."""
    made = with_servers_of(state_dir, older_state)
    up = Up(state_dir, free_port())
    try:
        base_url = up.wait_for(URL_RE).group(1)
        token = TOKEN_RE.search(up.output)
        headers = {"Authorization": f"Bearer {token.group(1)}"} if token else {}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            # `up` announces its address once the API answers: until the rebuilt read models
            # are swapped in, reads are 503 READ_MODELS_REBUILDING, retried as Retry-After says.
            deadline = time.monotonic() + 120
            while True:
                listed = client.get("/api/jobs", params={"limit": 100})
                if listed.status_code != 503 or time.monotonic() > deadline:
                    break
                assert listed.json()["error"]["code"] == "READ_MODELS_REBUILDING", listed.text
                time.sleep(0.2)
    finally:
        code = up.stop(signal.SIGINT)
    assert code == 0, up.output
    assert listed.status_code == 200, listed.text
    assert {job["id"]: job["status"] for job in listed.json()["items"]} == made.statuses
    assert "read models rebuilding" in up.output
    assert "read models rebuilt and swapped in" in up.output
    assert "Traceback" not in up.output
