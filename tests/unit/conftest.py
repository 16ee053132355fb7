"""Unit tests of pure code: no server, no subprocess, milliseconds each.

The fixtures of tests/conftest.py start servers only when a test asks for them; a unit test that
asks for one (even by naming an argument ``settings``) is refused at collection, so this folder
stays runnable without NATS or Postgres. Hypothesis tests here set ``deadline=None``: the machine
is shared and noisy, and a unit test asserts behaviour, never timing.
"""

from __future__ import annotations

import os

import pytest

SERVER_FIXTURES = frozenset({"nats_server_url", "pg_cluster", "settings", "system"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = __name__.rpartition(".")[0]
    for item in items:
        module = getattr(item, "module", None)
        if module is None or not module.__name__.startswith(here + "."):
            continue
        used = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if used:
            raise pytest.UsageError(
                f"{item.nodeid} asks for {', '.join(sorted(used))}: unit tests start no server"
            )


@pytest.fixture
def no_jobrunner_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test sees only the JOBRUNNER_* variables it sets itself (the settings' tests)."""
    for name in list(os.environ):
        if name.startswith("JOBRUNNER_"):
            monkeypatch.delenv(name)
