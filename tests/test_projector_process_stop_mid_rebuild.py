"""`jobrunner projector`, as a process, stopped (SIGTERM) while it rebuilds older read models
and Postgres is frozen: it exits within its stop_seconds. The stop used to leave the cancelled
rebuild running, and the process's exit (``asyncio.Runner``'s close waits for every task left,
without a bound) waited for the thaw; now the left rebuild's connections are terminated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.serverprocess import free_port
from tests.tools.frozen_stop import (
    EXIT_SECONDS,
    STOP_SECONDS,
    stopped_frozen,
)
from tests.tools.postgres_processes import postgres_pids
from tests.tools.rebuild_progress import rebuild_begun
from tests.tools.runners import REPO, runner_env
from tests.upgrade_support import older_state

pytestmark = pytest.mark.timeout(300)


async def test_a_projector_stopped_mid_rebuild_with_postgres_frozen_exits_within_its_stop(
    settings: Settings,
    own_nats: EmbeddedNats,
    own_postgres: EmbeddedPostgres,
    tmp_path: Path,
) -> None:
    settings = msgspec.structs.replace(
        settings,
        nats_url=own_nats.url,
        database_url=own_postgres.url,
        metrics_address=f"127.0.0.1:{free_port()}",
        stop_seconds=STOP_SECONDS,
    )
    await older_state(settings, jobs=40, lines=1500, per_event=2)
    log_file = tmp_path / "projector.log"
    with log_file.open("ab") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting is quick
            [sys.executable, "-m", "jobrunner.cli", "projector"],
            cwd=REPO,
            env=runner_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await rebuild_begun(settings.database_url)
        assert proc.poll() is None, log_file.read_text()
        took, code = await stopped_frozen(proc, postgres_pids(own_postgres))
        told = f"stop took {took:.1f} s, exit {code}:\n{log_file.read_text()}"
        assert "rebuilt and swapped in" not in log_file.read_text(), "make the rebuild bigger"
        assert took < STOP_SECONDS + EXIT_SECONDS, told
        assert code == 0, told
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
