"""A copy of the settings with some values changed (``Settings.replaced``: what ``jobrunner
events`` and ``replay`` make with ``jobrunner up``'s URLs, what ``load_settings`` makes for the
stream's read bound) still knows where its other values were written: a refusal or a warning
about it names the variable, file key or flag, as one about the settings loaded does. Before
session 40 such copies were made with ``msgspec.structs.replace``, which kept none of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobrunner.common.runtime import RUNTIME_FILE, with_runtime
from jobrunner.common.settings import (
    SettingRefused,
    Settings,
    capped_settings,
    load_settings,
    sources_of,
)
from jobrunner.common.settingsrefusal import written

pytestmark = pytest.mark.usefixtures("no_jobrunner_environment")


def test_a_copy_keeps_where_its_unchanged_values_were_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Loaded from a variable, a config file and a flag, copied with another prefix: each
    unchanged value is still told with its variable, file or flag."""
    config = tmp_path / "jobrunner.toml"
    config.write_text("stop_seconds = 9\n")
    monkeypatch.setenv("JOBRUNNER_STREAM_MAX_BYTES", "1000000")
    loaded = load_settings(config, flags={"port": "--port"}, port=8123)
    copy = loaded.replaced(prefix="other")
    assert copy.prefix == "other"
    assert sources_of(copy) == {
        "stream_max_bytes": "JOBRUNNER_STREAM_MAX_BYTES",
        "stop_seconds": f"config file {config}",
        "port": "--port",
    }
    where = sources_of(copy)["stream_max_bytes"]
    assert written("stream_max_bytes", 1000000, where, "is too much").startswith(
        "JOBRUNNER_STREAM_MAX_BYTES='1000000'"
    )


def test_a_changed_value_is_told_with_its_new_source_or_as_given_in_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A value the copy changed was not written where the original's was: told with the
    source the copy was given, or as ``name = value`` (given in code) without one."""
    monkeypatch.setenv("JOBRUNNER_PORT", "8123")
    loaded = load_settings()
    assert "port" not in sources_of(loaded.replaced(port=9000))
    assert sources_of(loaded.replaced(source="a file", port=9000))["port"] == "a file"


def test_a_changed_value_no_service_can_honour_is_refused_naming_its_source() -> None:
    with pytest.raises(SettingRefused) as refused:
        Settings().replaced(source="jobrunner up's runtime.json", lease_ttl_seconds=1.0)
    assert str(refused.value).startswith(
        "jobrunner up's runtime.json has lease_ttl_seconds = 1.0, which is out of range"
    )


def test_a_copy_warns_of_a_capped_value_as_it_was_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value above its setting's largest, from a variable: the copy's warning names the
    variable and the value as written, as the loaded settings' does."""
    monkeypatch.setenv("JOBRUNNER_SESSION_MAX_AGE_SECONDS", "1e12")
    loaded = load_settings()
    assert capped_settings(loaded.replaced(prefix="other")) == capped_settings(loaded)
    assert capped_settings(loaded)[0].startswith("JOBRUNNER_SESSION_MAX_AGE_SECONDS='1e12'")


def test_changing_a_capped_value_drops_its_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBRUNNER_SESSION_MAX_AGE_SECONDS", "1e12")
    assert capped_settings(load_settings().replaced(session_max_age_seconds=60.0)) == []


def test_settings_joined_to_a_running_installation_keep_their_sources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``jobrunner events`` and ``replay`` take ``jobrunner up``'s URLs from its runtime file:
    the values set by variables are still told with them (the stream's size refused by NATS,
    say), and the URLs taken name the file."""
    (tmp_path / RUNTIME_FILE).write_text(json.dumps({"nats_url": "nats://127.0.0.1:4999"}))
    monkeypatch.setenv("JOBRUNNER_STREAM_MAX_BYTES", "1000000")
    loaded = load_settings(flags={"state_dir": "--state-dir"}, state_dir=str(tmp_path))
    joined = with_runtime(loaded, {})
    assert joined.nats_url == "nats://127.0.0.1:4999"
    assert sources_of(joined) == {
        "stream_max_bytes": "JOBRUNNER_STREAM_MAX_BYTES",
        "state_dir": "--state-dir",
        "nats_url": f"jobrunner up's {tmp_path / RUNTIME_FILE}",
    }
