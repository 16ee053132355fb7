"""``jobrunner replay`` run in the test's own process, so that a fault a test patches into the
replay's or rebuild's code lands there: its exit code and what it said."""

from __future__ import annotations

import asyncio

import pytest

from jobrunner import cli
from jobrunner.common.settings import Settings
from tests.cli_support import cli_env
from tests.tools.logging_state import logging_put_back

# How long a test waits for the command at most: well past its bounds, to see one that overruns.
PATIENCE = 120.0


async def replay_in_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int | None, str]:
    """``jobrunner replay`` against ``settings``' servers (its probe's bound included): its exit
    code (None: still running after PATIENCE) and its standard error."""
    for name, value in cli_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "JOBRUNNER_REPLAY_POSTGRES_ANSWER_SECONDS", str(settings.replay_postgres_answer_seconds)
    )
    with logging_put_back():
        try:
            code: int | None = await asyncio.wait_for(
                asyncio.to_thread(cli.main, ["replay"]), PATIENCE
            )
        except TimeoutError:
            code = None
    return code, capsys.readouterr().err
