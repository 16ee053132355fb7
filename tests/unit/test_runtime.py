"""Finding a running ``jobrunner up`` from its runtime.json, without configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobrunner import cli
from jobrunner.common import exitcodes
from jobrunner.common.runtime import RUNTIME_FILE, runtime_path, with_runtime
from jobrunner.common.settings import Settings
from tests.tools.logging_state import logging_put_back

RUNNING = {
    "nats_url": "nats://127.0.0.1:4567",
    "database_url": "postgresql://x@127.0.0.1:5544/jobrunner",
    "prefix": "mine",
}


def state(tmp_path: Path, content: str | None = None) -> Settings:
    configured = Settings(state_dir=str(tmp_path))
    if content is not None:
        runtime_path(configured).write_text(content)
    return configured


def test_urls_of_the_running_installation_are_used(tmp_path: Path) -> None:
    """With nothing configured, tools reach the servers `jobrunner up` started."""
    found = with_runtime(state(tmp_path, json.dumps(RUNNING)), {})
    assert (found.nats_url, found.database_url, found.prefix) == tuple(RUNNING.values())


def test_without_runtime_file_the_settings_stay(tmp_path: Path) -> None:
    """Without a running installation the configured settings are used as they are."""
    configured = state(tmp_path)
    assert with_runtime(configured, {}) == configured


def test_an_explicit_nats_url_wins(tmp_path: Path) -> None:
    """A NATS URL set in the environment is not replaced by the runtime file's."""
    configured = state(tmp_path, json.dumps(RUNNING))
    assert with_runtime(configured, {"JOBRUNNER_NATS_URL": "nats://x:1"}) == configured


def test_an_explicit_database_url_wins(tmp_path: Path) -> None:
    """A configured database URL is kept while NATS and prefix come from the runtime file."""
    configured = state(tmp_path, json.dumps(RUNNING))
    found = with_runtime(configured, {"JOBRUNNER_DATABASE_URL": "postgresql://other"})
    assert found.database_url == configured.database_url
    assert found.nats_url == RUNNING["nats_url"]


@pytest.mark.parametrize(
    "content",
    ["not json", "[1, 2]", '"text"', "null", '{"nats_url": 5, "prefix": ["x"]}'],
    ids=["malformed", "list", "string", "null", "wrong-types"],
)
def test_damaged_runtime_file_is_ignored(tmp_path: Path, content: str) -> None:
    """A runtime.json that is damaged or of another shape is ignored, not a traceback."""
    configured = state(tmp_path, content)
    assert with_runtime(configured, {}) == configured


@pytest.mark.parametrize(
    ("written", "sentence"),
    [
        ({"nats_url": "foo://127.0.0.1:1"}, 'has nats_url = "foo://127.0.0.1:1", which cannot'),
        ({"prefix": "bad prefix!"}, 'has prefix = "bad prefix!", which cannot be used'),
    ],
    ids=["nats_url", "prefix"],
)
def test_a_runtime_file_value_no_command_can_use_is_refused_naming_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    written: dict[str, str],
    sentence: str,
) -> None:
    """``jobrunner events`` on a runtime.json whose NATS URL or prefix no command can use: one
    sentence naming the file and the value, exit 78 (before, the URL's refusal named no source
    and the prefix's was a traceback)."""
    for name in ("JOBRUNNER_NATS_URL", "JOBRUNNER_DATABASE_URL", "JOBRUNNER_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / RUNTIME_FILE).write_text(json.dumps(written))
    with logging_put_back():  # the command configures logging on the captured stderr
        assert cli.main(["events", "--state-dir", str(tmp_path)]) == exitcodes.CONFIG
    said = capsys.readouterr().err
    assert f"jobrunner: jobrunner up's {tmp_path / RUNTIME_FILE} {sentence}" in said, said
    assert "Traceback" not in said
